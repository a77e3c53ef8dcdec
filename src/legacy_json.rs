//! JSON printed the way Google's legacy Nearby Search prints it, so WHATSAT replies look
//! like the documents clients of the original service expect.
//!
//! Google's legacy output is JsonCpp's `StyledWriter`: 3-space indentation, `"key" : value`,
//! `[]` and `{}` for empty containers, and a short array of scalars on one line
//! (`[ "bank", "atm" ]`). Keys keep the order they were parsed in (serde_json's
//! `preserve_order`), numbers print as serde_json holds them, and UTF-8 is written as is.
//! The output never contains an empty line and never ends in a newline, because the
//! client protocol ends a WHATSAT reply with the first blank line.

use serde_json::{Map, Value};

/// JsonCpp's right margin: an array of scalars whose one-line form would reach this many
/// bytes is printed one element per line instead.
const RIGHT_MARGIN: usize = 74;
const INDENT: &str = "   ";

/// Prints `value` in Google's legacy style.
pub fn pretty(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

/// A document in the legacy shape: `html_attributions`, `results`, `status`, then
/// `error_message` when there is one (an empty message counts as none).
pub fn document(results: Vec<Value>, status: &str, message: Option<&str>) -> Value {
    let mut doc = Map::new();
    doc.insert("html_attributions".into(), Value::Array(Vec::new()));
    doc.insert("results".into(), Value::Array(results));
    doc.insert("status".into(), Value::String(status.into()));
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        doc.insert("error_message".into(), Value::String(message.into()));
    }
    Value::Object(doc)
}

/// The server's own answer when it cannot or need not ask Google.
pub fn error_document(status: &str, message: &str) -> String {
    pretty(&document(Vec::new(), status, Some(message)))
}

/// The answer for a bound of 0: nothing asked, nothing found, and that is fine.
pub fn ok_empty() -> String {
    pretty(&document(Vec::new(), "OK", None))
}

fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => write_object(out, map, depth),
        Value::Array(items) if !items.is_empty() => write_array(out, items, depth),
        flat => write_flat(out, flat),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, depth: usize) {
    out.push('{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        newline(out, depth + 1);
        write_string(out, key);
        out.push_str(" : ");
        write_value(out, value, depth + 1);
    }
    newline(out, depth);
    out.push('}');
}

fn write_array(out: &mut String, items: &[Value], depth: usize) {
    if let Some(line) = one_line(items) {
        out.push_str(&line);
        return;
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        newline(out, depth + 1);
        write_value(out, item, depth + 1);
    }
    newline(out, depth);
    out.push(']');
}

/// JsonCpp's `isMultilineArray`, inverted: a non-empty array of scalars (or empty
/// containers) stays on one line while `[ a, b ]` is shorter than the right margin.
fn one_line(items: &[Value]) -> Option<String> {
    if items.len() * 3 >= RIGHT_MARGIN {
        return None;
    }
    let nested = |v: &Value| match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    };
    if items.iter().any(nested) {
        return None;
    }
    let parts: Vec<String> = items
        .iter()
        .map(|v| {
            let mut s = String::new();
            write_flat(&mut s, v);
            s
        })
        .collect();
    let width = 4 + (items.len().saturating_sub(1)) * 2 + parts.iter().map(String::len).sum::<usize>();
    (width < RIGHT_MARGIN).then(|| format!("[ {} ]", parts.join(", ")))
}

/// Scalars and empty containers: everything that prints without a line break.
fn write_flat(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

/// Escapes only what JSON requires, so non-ASCII text stays readable UTF-8 and a newline
/// inside a string can never become a blank line in the reply.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str(INDENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Value {
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("bad test JSON: {e}"),
        }
    }

    /// Every printed document must read back as the same value.
    fn round_trips(v: &Value) -> String {
        let text = pretty(v);
        assert_eq!(&parse(&text), v, "{text}");
        assert!(!text.contains("\n\n"), "blank line in:\n{text}");
        assert!(!text.ends_with('\n'));
        text
    }

    #[test]
    fn scalars() {
        assert_eq!(pretty(&json!(null)), "null");
        assert_eq!(pretty(&json!(true)), "true");
        assert_eq!(pretty(&json!(false)), "false");
        assert_eq!(pretty(&json!("x")), "\"x\"");
        assert_eq!(pretty(&json!(42)), "42");
    }

    #[test]
    fn empty_containers() {
        assert_eq!(pretty(&json!({})), "{}");
        assert_eq!(pretty(&json!([])), "[]");
        assert_eq!(
            round_trips(&json!({"a": [], "b": {}})),
            "{\n   \"a\" : [],\n   \"b\" : {}\n}"
        );
        assert_eq!(pretty(&json!([[], {}])), "[ [], {} ]");
    }

    #[test]
    fn nesting_indents_three_spaces_per_level() {
        let v = json!({"a": {"b": {"c": 1}}, "d": [{"e": 2}, {"f": [3, 4]}]});
        let want = r#"{
   "a" : {
      "b" : {
         "c" : 1
      }
   },
   "d" : [
      {
         "e" : 2
      },
      {
         "f" : [ 3, 4 ]
      }
   ]
}"#;
        assert_eq!(round_trips(&v), want);
    }

    #[test]
    fn short_scalar_arrays_stay_on_one_line_like_google() {
        let v = json!({"types": ["bank", "atm", "finance", "point_of_interest", "establishment"]});
        assert_eq!(
            round_trips(&v),
            "{\n   \"types\" : [ \"bank\", \"atm\", \"finance\", \"point_of_interest\", \"establishment\" ]\n}"
        );
    }

    #[test]
    fn long_scalar_arrays_go_one_per_line() {
        // `[ "x..x", "ab" ]` is n + 12 bytes: 74 for n = 62 reaches JsonCpp's margin.
        let long = "x".repeat(62);
        let v = json!([long, "ab"]);
        assert_eq!(round_trips(&v), format!("[\n   \"{long}\",\n   \"ab\"\n]"));
        // 73 bytes: just fits.
        let fits = "x".repeat(61);
        assert_eq!(pretty(&json!([fits, "ab"])), format!("[ \"{fits}\", \"ab\" ]"));
        // 25 elements * 3 >= 74 forces one per line whatever their width.
        let many: Vec<u8> = vec![1; 25];
        assert_eq!(round_trips(&json!(many)).lines().count(), 27);
        // 23 elements: 4 + 22 * 2 + 23 = 71 bytes, one line.
        let fewer: Vec<u8> = vec![1; 23];
        assert_eq!(round_trips(&json!(fewer)).lines().count(), 1);
    }

    #[test]
    fn array_holding_a_container_is_multi_line() {
        let v = json!([1, [2]]);
        assert_eq!(round_trips(&v), "[\n   1,\n   [ 2 ]\n]");
    }

    #[test]
    fn keys_keep_insertion_order() {
        let v = parse(r#"{"zeta": 1, "alpha": 2, "mid": {"y": 1, "b": 2}}"#);
        let text = round_trips(&v);
        let z = text.find("zeta");
        let a = text.find("alpha");
        let y = text.find("\"y\"");
        let b = text.find("\"b\"");
        assert!(z < a && a.is_some(), "{text}");
        assert!(y < b && y.is_some(), "{text}");
    }

    #[test]
    fn numbers_print_as_parsed() {
        let v = parse(r#"[34.068921, -118.4451811, 0.1, 1e300, 3, -7, 18446744073709551615, 2.5e-7, 4.0]"#);
        assert_eq!(
            pretty(&v),
            "[\n   34.068921,\n   -118.4451811,\n   0.1,\n   1e+300,\n   3,\n   -7,\n   18446744073709551615,\n   2.5e-7,\n   4.0\n]"
        );
        assert_eq!(
            pretty(&parse("[34.0736204, -118.4003563]")),
            "[ 34.0736204, -118.4003563 ]"
        );
    }

    #[test]
    fn unicode_is_not_escaped() {
        let v = parse(r#"{"name": "Caf\u00e9 \u3064\u3058\u7530 \ud83c\udf5c", "href": "\u003ca\u003e"}"#);
        let text = round_trips(&v);
        assert!(text.contains("\"Café つじ田 🍜\""), "{text}");
        assert!(text.contains("\"<a>\""), "{text}");
    }

    #[test]
    fn escapes_what_json_requires() {
        let v = json!({"s": "a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j/k\u{7f}"});
        let text = round_trips(&v);
        assert_eq!(
            text,
            "{\n   \"s\" : \"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\\u001fj/k\u{7f}\"\n}"
        );
    }

    #[test]
    fn keys_are_escaped_too() {
        let v = json!({"a\"\n": 1});
        assert_eq!(round_trips(&v), "{\n   \"a\\\"\\n\" : 1\n}");
    }

    #[test]
    fn strings_full_of_newlines_never_make_blank_lines() {
        let v = json!({"a": "\n\n\n", "b": ["\n\n", "\r\n\r\n"]});
        round_trips(&v);
    }

    #[test]
    fn google_like_document() {
        let text = r#"{"html_attributions":[],"next_page_token":"Aa_1","results":[{"geometry":{"location":{"lat":34.068921,"lng":-118.4451811}},"name":"UCLA","photos":[{"height":1200,"html_attributions":["\u003ca href=\"https://maps.google.com/maps/contrib/1\"\u003eA very long contributor name for wrapping\u003c/a\u003e"],"width":1600}],"types":["university","point_of_interest","establishment"]}],"status":"OK"}"#;
        let want = r#"{
   "html_attributions" : [],
   "next_page_token" : "Aa_1",
   "results" : [
      {
         "geometry" : {
            "location" : {
               "lat" : 34.068921,
               "lng" : -118.4451811
            }
         },
         "name" : "UCLA",
         "photos" : [
            {
               "height" : 1200,
               "html_attributions" : [
                  "<a href=\"https://maps.google.com/maps/contrib/1\">A very long contributor name for wrapping</a>"
               ],
               "width" : 1600
            }
         ],
         "types" : [ "university", "point_of_interest", "establishment" ]
      }
   ],
   "status" : "OK"
}"#;
        assert_eq!(round_trips(&parse(text)), want);
    }

    #[test]
    fn server_documents() {
        assert_eq!(
            ok_empty(),
            "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"OK\"\n}"
        );
        assert_eq!(
            error_document("UNKNOWN_ERROR", "server busy"),
            "{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"UNKNOWN_ERROR\",\n   \"error_message\" : \"server busy\"\n}"
        );
        assert_eq!(error_document("OK", ""), ok_empty());
        let doc = document(vec![json!({"name": "x"})], "OK", None);
        assert_eq!(
            round_trips(&doc),
            "{\n   \"html_attributions\" : [],\n   \"results\" : [\n      {\n         \"name\" : \"x\"\n      }\n   ],\n   \"status\" : \"OK\"\n}"
        );
    }
}
