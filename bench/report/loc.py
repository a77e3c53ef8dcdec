#!/usr/bin/env python3
"""Lines of code per concern for herd and the two references (REPORT.md, maintainability).

A line of code is a non-blank line that is not only a comment; herd's unit tests (each
file's `#[cfg(test)] mod tests` to its end) are left out, as the references have none.
herd is split by file; the references are single files, split by the function (or class,
or `// ----` section) each line falls under. Writes <REPORT_OUT>/loc.json and prints a table.
"""

import json
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONCERNS = ["protocol", "connections+backpressure", "flooding+links", "timers", "places",
            "config+cli", "logging", "ops (metrics, admin, snapshots, TLS, status)"]

HERD = {
    "protocol": ["protocol.rs", "lines.rs", "legacy_json.rs"],
    "connections+backpressure": ["reactor.rs", "session.rs", "slab.rs"],
    "flooding+links": ["links.rs", "table.rs"],
    "timers": ["timer.rs"],
    "places": ["places.rs", "places/sched.rs", "places/stats.rs"],
    "config+cli": ["config.rs", "cli.rs", "main.rs"],
    "logging": ["logging.rs", "log_file.rs"],
    "ops (metrics, admin, snapshots, TLS, status)": ["metrics.rs", "admin.rs", "snapshot.rs",
                                                     "status.rs", "tls.rs", "certs.rs"],
}

# Reference functions by concern (the first match of a header line wins).
ASYNCIO = [
    (r"def (shown)|class UtcFormatter", "logging"),
    (r"def (parse_|format_diff|legacy_json|document|legacy_place)", "protocol"),
    (r"def (offer|peer_in|dialler)", "flooding+links"),
    (r"def (client|lines|on_client_line)", "connections+backpressure"),
    (r"def (whatsat|places)", "places"),
    (r"def (main|run|__init__)|class Herd", "config+cli"),
]
TOKIO = [
    (r"// ---- configuration|fn (load|start|localhost|main)\b|async fn (main|accept_loop)", "config+cli"),
    (r"// ---- the log|struct Log|impl Log|fn (rfc3339|lock)\b|struct Shown|impl std::fmt::Display for Shown",
     "logging"),
    (r"// ---- protocol|fn (fields|is_decimal|at_most|parse_location|parse_time|format_diff|now_ns|is_diff|"
     r"legacy_json|document|whatsat_reply|legacy_place)\b", "protocol"),
    (r"fn (offer|peer_in|record|dialler|link|jitter)\b", "flooding+links"),
    (r"fn (client|on_line|skip_line|write_replies)\b|enum Reply|struct Herd|impl Herd|// ---- the server",
     "connections+backpressure"),
    (r"fn (whatsat|call)\b|struct Places|impl Places", "places"),
]


def code_lines(text, comment):
    return [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(comment)]


def strip_tests(text):
    m = re.search(r"^#\[cfg\(test\)\]\n(pub )?mod \w+", text, re.M)
    return text[: m.start()] if m else text


def herd_loc():
    out = {}
    for concern, files in HERD.items():
        n = 0
        for f in files:
            p = os.path.join(ROOT, "src", f)
            if os.path.exists(p):
                n += len(code_lines(strip_tests(open(p).read()), "//"))
        out[concern] = n
    return out


def split_loc(path, rules, comment, header):
    out = {c: 0 for c in CONCERNS}
    cur = "config+cli"
    for ln in open(path).read().splitlines():
        s = ln.strip()
        if re.match(header, ln):
            for rx, c in rules:
                if re.search(rx, ln):
                    cur = c
                    break
        if s and not s.startswith(comment):
            out[cur] += 1
    return out


def main():
    res = {
        "herd": herd_loc(),
        "asyncio": split_loc(os.path.join(ROOT, "bench/ref/asyncio/herd_asyncio.py"), ASYNCIO, "#",
                             r"^(class |def |async def |    def |    async def )"),
        "tokio": split_loc(os.path.join(ROOT, "bench/ref/tokio/src/main.rs"), TOKIO, "//",
                           r"^(// ----|fn |async fn |struct |enum |impl|    fn |    async fn )"),
    }
    for impl in res:
        res[impl]["total"] = sum(res[impl].values())
        # What the references implement (SPEC §2-§3), for a like-for-like total.
        res[impl]["total without ops"] = res[impl]["total"] - res[impl].get(CONCERNS[-1], 0)
    out = os.environ.get("REPORT_OUT")
    if out:
        with open(os.path.join(out, "loc.json"), "w") as f:
            json.dump(res, f, indent=1)
    print(f"{'concern':46} {'herd':>6} {'asyncio':>8} {'tokio':>6}")
    for c in CONCERNS + ["total", "total without ops"]:
        print(f"{c:46} {res['herd'].get(c, 0):>6} {res['asyncio'].get(c, 0):>8} {res['tokio'].get(c, 0):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
