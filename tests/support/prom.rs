//! A strict reader of the Prometheus text format 0.0.4, shared by the unit tests
//! (src/metrics.rs includes this file) and the integration tests (tests/ops.rs), so the
//! real server's `/metrics` is held to the same rules as the renderer. It stands in for
//! `promtool check metrics` where that is not installed.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

/// A strict reader of text format 0.0.4: every sample belongs to a family announced by
/// `# HELP` and `# TYPE` before it, families are contiguous and never repeated, names
/// and labels are well formed, no label set repeats, values are floats, histograms
/// have increasing `le`, cumulative counts and a `+Inf` bucket equal to `_count`.
/// Returns the samples as (name, labels, value).
pub fn parse_strict(text: &str) -> Result<Vec<Sample>, String> {
    if !text.ends_with('\n') {
        return Err("does not end with a newline".into());
    }
    let mut samples = Vec::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut current: Option<String> = None;
    let mut finished: HashSet<String> = HashSet::new();
    let mut seen: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, arg) = (parts.next(), parts.next(), parts.next());
            let (Some(kw), Some(name)) = (kw, name) else {
                return Err(format!("line {n}: bad comment"));
            };
            check_name(name).map_err(|e| format!("line {n}: {e}"))?;
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    finished.insert(c);
                }
                if finished.contains(name) {
                    return Err(format!("line {n}: family {name} repeated"));
                }
                current = Some(name.to_string());
                buckets.clear();
            }
            match kw {
                "HELP" => {
                    if arg.is_none_or(str::is_empty) || !helped.insert(name.into()) {
                        return Err(format!("line {n}: empty or second HELP for {name}"));
                    }
                }
                "TYPE" => {
                    let t = arg.unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(format!("line {n}: bad type {t}"));
                    }
                    if types.insert(name.into(), t.into()).is_some() {
                        return Err(format!("line {n}: second TYPE for {name}"));
                    }
                }
                _ => return Err(format!("line {n}: unknown comment {kw}")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(format!("line {n}: blank or bare comment line"));
        }
        let (name, labels, value) = parse_sample(line).map_err(|e| format!("line {n}: {e}"))?;
        let Some(family) = current.clone() else {
            return Err(format!("line {n}: sample before any TYPE"));
        };
        let (Some(t), true) = (types.get(&family), helped.contains(&family)) else {
            return Err(format!("line {n}: {family} lacks HELP or TYPE"));
        };
        let ok_name = match t.as_str() {
            "histogram" => [
                format!("{family}_bucket"),
                format!("{family}_sum"),
                format!("{family}_count"),
            ]
            .contains(&name),
            "counter" => name == family && name.ends_with("_total"),
            _ => name == family,
        };
        if !ok_name {
            return Err(format!(
                "line {n}: sample {name} does not belong to {family} ({t})"
            ));
        }
        if t == "histogram" {
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or(format!("line {n}: bucket without le"))?;
                let le = parse_value(&le.1).ok_or(format!("line {n}: bad le"))?;
                if let Some((prev_le, prev_n)) = buckets.last() {
                    if le <= *prev_le || value < *prev_n {
                        return Err(format!("line {n}: buckets not increasing"));
                    }
                }
                buckets.push((le, value));
            } else if name.ends_with("_count") {
                match buckets.last() {
                    Some((le, c)) if le.is_infinite() && *c == value => {}
                    _ => return Err(format!("line {n}: +Inf bucket missing or != _count")),
                }
            }
        }
        if !seen.insert((name.clone(), labels.clone())) {
            return Err(format!("line {n}: repeated sample"));
        }
        samples.push((name, labels, value));
    }
    // An announced family with no samples (links of a server without neighbours) is legal.
    Ok(samples)
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => v.parse().ok(),
        _ => None,
    }
}

pub type Sample = (String, Vec<(String, String)>, f64);

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("label without =")?;
            let key = &rest[..eq];
            let key_ok = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !key_ok || key.starts_with("__") {
                return Err(format!("bad label name {key:?}"));
            }
            rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("bad escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("label {key} repeated"));
            }
            labels.push((key.to_string(), value));
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by ,".into());
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before value")?;
    if value.contains(' ') {
        return Err("timestamps or extra fields not expected".into());
    }
    let value = parse_value(value).ok_or(format!("bad value {value:?}"))?;
    Ok((name.to_string(), labels, value))
}
