//! SPEC §7's bounds on the log and on herd.yml, against the real binary.

mod support;

use std::process::Command;

use support::*;

/// Invalid message number `i`, `len` bytes long; its reply is `? ` + the message.
fn junk(i: usize, len: usize) -> String {
    let head = format!("junk-{i:06}-");
    format!("{head}{}", "y".repeat(len - head.len()))
}

#[test]
fn a_long_message_is_logged_cut_with_its_length() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let msg = junk(1, 5000);
    assert_eq!(c.ask(&msg), format!("? {msg}\n"), "the reply itself is whole");
    let line = eventually(DEADLINE, || {
        h.log("Alpha")
            .lines()
            .find(|l| l.contains("junk-000001"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no log line for the message:\n{}", h.log("Alpha")));
    let shown = format!("{}...(5000 bytes)", &msg[..256]);
    assert!(
        line.ends_with(&format!("recv: {shown} | sent: ? {shown}")),
        "{line}"
    );
    assert!(line.len() < 800, "log line of {} bytes", line.len());
}

/// An over-long line is answered (and its head logged) before its end arrives; once the
/// end is read, its full length is logged too.
#[test]
fn an_over_long_line_is_logged_with_its_full_length() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let msg = junk(2, 30_000);
    assert_eq!(c.ask(&msg), format!("? {}\n", &msg[..256]));
    let logged = eventually(DEADLINE, || {
        h.log("Alpha")
            .contains("over-long line was 30000 bytes")
            .then_some(())
    });
    assert!(logged.is_some(), "no full length logged:\n{}", h.log("Alpha"));
}

#[test]
fn the_log_rotates_at_rotate_mb_and_keeps_keep_files() {
    let h = Herd::single("log: { dir: logs, level: info, rotate_mb: 1, keep: 2 }\n");
    let mut c = h.client("Alpha");
    // About 560 bytes of log per message: 6,000 of them make 3.3 MB, three rotations.
    let count = 6000;
    for batch in 0..count / 500 {
        let mut text = String::new();
        for i in batch * 500..(batch + 1) * 500 {
            text += &junk(i, 250);
            text.push('\n');
        }
        c.send(text);
        for _ in 0..500 {
            c.line();
        }
    }
    let logs = h.dir.path().join("logs");
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(&logs)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let last = format!("junk-{:06}-", count - 1);
    eventually(DEADLINE, || h.log("Alpha").contains(&last).then_some(()))
        .unwrap_or_else(|| panic!("last message never logged; files {:?}", names()));
    assert_eq!(names(), ["Alpha.log", "Alpha.log.1", "Alpha.log.2"]);
    let read = |n: &str| std::fs::read_to_string(logs.join(n)).unwrap_or_default();
    for n in ["Alpha.log.1", "Alpha.log.2"] {
        let len = read(n).len();
        // Within rotate_mb, and short of it by less than one record.
        assert!(((1 << 20) - 4096..=1 << 20).contains(&len), "{n}: {len} bytes");
    }
    // The files kept hold one unbroken run of messages, up to the last one.
    let kept = read("Alpha.log.2") + &read("Alpha.log.1") + &read("Alpha.log");
    let numbers: Vec<usize> = kept
        .lines()
        .filter_map(|l| l.split("recv: junk-").nth(1))
        .filter_map(|rest| rest.get(..6)?.parse().ok())
        .collect();
    assert_eq!(numbers.last(), Some(&(count - 1)));
    let first = numbers[0];
    assert!(first > 0, "the oldest file was dropped");
    assert!(
        numbers.iter().copied().eq(first..count),
        "no message lost or repeated across rotations"
    );
}

fn refused(yaml: &str) -> String {
    let dir = TempDir::new("caps");
    let path = dir.path().join("herd.yml");
    std::fs::write(&path, yaml).expect("write herd.yml");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("Alpha")
        .output()
        .expect("run herd");
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_config_with_thousands_of_aliases_or_deep_nesting_is_refused_before_parsing() {
    let servers = "servers:\n  Alpha: { port: 1, peer_port: 2 }\n";
    // The billion-laughs shape: each level names the one before it ten times.
    let mut laughs = format!("{servers}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..300 {
        let p = i - 1;
        laughs +=
            &format!("l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n");
    }
    let err = refused(&laughs);
    assert!(err.contains("refused: more than 256 aliases"), "{err}");
    let err = refused(&format!(
        "{servers}x: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    ));
    assert!(
        err.contains("refused: nested deeper than 64 levels at line 3"),
        "{err}"
    );
    // Closing brackets in quotes do not hide the nesting (this file kept the parser
    // busy for over six minutes before).
    let sneaky = format!(
        "{servers}log:\n  dir: {}{}\n",
        r#"["]", "#.repeat(140_000),
        "]".repeat(140_000)
    );
    let err = refused(&sneaky);
    assert!(
        err.contains("refused: nested deeper than 64 levels at line 4"),
        "{err}"
    );
    let err = refused(&format!("{servers}#{}\n", "x".repeat(2 << 20)));
    assert!(err.contains("refused: the file is over 1048576 bytes"), "{err}");
}

#[test]
fn a_missing_config_says_where_it_looked() {
    let dir = TempDir::new("missing");
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .arg("Alpha")
        .output()
        .expect("run herd");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let looked = dir.path().join("herd.yml");
    assert!(err.contains(&format!("looked for {}", looked.display())), "{err}");
    assert!(err.contains("--config"), "{err}");
}
