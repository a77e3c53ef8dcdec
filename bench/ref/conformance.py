#!/usr/bin/env python3
"""A conformance smoke test for any server that claims SPEC §2-§3: herd and the references.

    bench/ref/conformance.py CMD [ARG...]

starts `CMD ARG... --config <temp>/herd.yml NAME` for a three-server line herd A - B - C
on free loopback ports, with a tiny Places imitation (answering after a delay), and checks
a subset of the SPEC that the benchmark figures rely on: the IAMAT reply and its diff,
invalid echoes, WHATSAT for an unknown client, WHATSAT with bound 0 and with no key,
reply order behind a slow WHATSAT, a stale IAMAT, an over-long line, a final line without
its newline, 2-hop propagation and table sync after a restart. Python 3 standard library
only; prints one line per check and "N passed, M failed"; exit status 1 on any failure.
"""

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

DEADLINE = 20.0  # generous: the machine is a shared 2-core box
LOC = "+34.068930-118.445127"
DIFF = re.compile(r"[+-]\d+\.\d{9}")
FAKE_KEY = "conformance-test-key"  # not a real key: only the imitation below sees it
PLACES_DELAY = 0.5


class Places(http.server.ThreadingHTTPServer):
    """Places API (New) searchNearby, answering `delay` seconds late."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), PlacesHandler)
        self.requests = 0
        self.lock = threading.Lock()

    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class PlacesHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests += 1
        time.sleep(PLACES_DELAY)
        try:
            n = int(json.loads(body).get("maxResultCount", 20))
        except (ValueError, AttributeError):
            n = 20
        ok = self.headers.get("X-Goog-Api-Key") == FAKE_KEY
        places = [{"id": f"place{i}", "displayName": {"text": f"Place {i}", "languageCode": "en"},
                   "location": {"latitude": 34.07 + i / 1000, "longitude": -118.44},
                   "formattedAddress": f"{i} Westwood Blvd", "types": ["cafe", "food"]}
                  for i in range(min(n, 20))]
        doc = {"places": places} if ok else {"error": {"code": 403, "message": "bad key",
                                                      "status": "PERMISSION_DENIED"}}
        out = json.dumps(doc).encode()
        self.send_response(200 if ok else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; got {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def whatsat_reply(self):
        """The AT line and the JSON text of one WHATSAT reply (up to its blank line)."""
        at = self.line()
        if at.startswith("?"):
            return at, None
        body = []
        while (line := self.line()) != "":
            body.append(line)
        return at, "\n".join(body)

    def rest(self):
        """Everything until the server closes."""
        while chunk := self.sock.recv(65536):
            self.buf += chunk
        return self.buf.decode("utf-8", "replace")

    def close(self):
        self.sock.close()


class Herd:
    def __init__(self, cmd, places):
        self.cmd = cmd
        self.dir = tempfile.mkdtemp(prefix="herd-conformance-")
        self.ports = {n: (free_port(), free_port()) for n in "ABC"}
        links = {"A": ["B"], "B": ["A", "C"], "C": ["B"]}
        yml = "servers:\n" + "".join(
            f"  {n}: {{ host: 127.0.0.1, port: {p}, peer_port: {pp}, neighbours: [{', '.join(links[n])}] }}\n"
            for n, (p, pp) in self.ports.items())
        yml += f"places: {{ url: '{places.url()}', key_env: HERD_CONFORMANCE_KEY, timeout_ms: 5000 }}\n"
        yml += "log: { dir: logs, level: info }\n"
        self.config = os.path.join(self.dir, "herd.yml")
        with open(self.config, "w") as f:
            f.write(yml)
        self.procs = {}

    def start(self, name, key=False):
        env = {k: v for k, v in os.environ.items()
               if k not in ("GOOGLE_PLACES_API_KEY", "HERD_PLACES_URL", "HERD_PLACES_API")}
        env.pop("HERD_CONFORMANCE_KEY", None)
        if key:
            env["HERD_CONFORMANCE_KEY"] = FAKE_KEY
        err = open(os.path.join(self.dir, f"{name}.stderr"), "ab")
        p = subprocess.Popen(self.cmd + ["--config", self.config, name], env=env,
                             stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.procs[name] = p
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}: {self.stderr(name)}")
            try:
                socket.create_connection(("127.0.0.1", self.ports[name][0]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{name} did not start listening")

    def stderr(self, name):
        with open(os.path.join(self.dir, f"{name}.stderr"), errors="replace") as f:
            return f.read()[-500:]

    def kill9(self, name):
        p = self.procs.pop(name)
        p.kill()
        p.wait()

    def client(self, name):
        return Client(self.ports[name][0])

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def eventually(f, what, within=DEADLINE):
    end = time.monotonic() + within
    while True:
        got = f()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        time.sleep(0.02)


def stored(herd, server, client):
    """The AT line `server` holds for `client` (WHATSAT bound 0), or None."""
    c = herd.client(server)
    try:
        c.send(f"WHATSAT {client} 10 0\n")
        at, _ = c.whatsat_reply()
        return None if at.startswith("?") else at
    finally:
        c.close()


def ns(text):
    i, _, f = text.partition(".")
    return int(i) * 10**9 + int((f + "0" * 9)[:9])


# ---- the checks --------------------------------------------------------------------------

def iamat_reply(herd, _places):
    c = herd.client("A")
    t = f"{time.time() + 100:.9f}"  # in the future: the diff is negative
    before = time.time_ns()
    c.send(f"IAMAT kiwi.cs.ucla.edu {LOC} {t}\n")
    line = c.line()
    after = time.time_ns()
    f = line.split(" ")
    expect(len(f) == 6 and f[0] == "AT" and f[1] == "A" and f[3:] == ["kiwi.cs.ucla.edu", LOC, t],
           f"reply {line!r}")
    expect(DIFF.fullmatch(f[2]) and f[2][0] == "-", f"diff {f[2]!r} is not signed with 9 decimals")
    server_ns = ns(t) - ns(f[2][1:])  # diff = server clock - client time
    expect(before - 1_000_000 <= server_ns <= after + 1_000_000,
           f"diff {f[2]} does not match the clock when the line was read")
    c.send(f"IAMAT tab\t{LOC}   1621464827.5\r\n")
    line = c.line()
    expect(re.fullmatch(rf"AT A \+\d+\.\d{{9}} tab {re.escape(LOC)} 1621464827\.5", line),
           f"blanks and CRLF: {line!r}")
    c.close()


def invalid_echo(herd, _places):
    c = herd.client("A")
    for msg in ["  FOO  bar \t", "IAMAT kiwi +91.0-118 1", "IAMAT kiwi +34-118", "iamat kiwi +34-118 1",
                "IAMAT kiwi 34-118 1", "IAMAT kiwi +34-118 1e9", "WHATSAT kiwi.cs.ucla.edu 51 5",
                "WHATSAT kiwi.cs.ucla.edu 10 21", "AT A +0.000000000 x +1+1 1", "HELLO B"]:
        c.send(msg + "\r\n")
        got = c.line()
        expect(got == "? " + msg, f"{msg!r} answered {got!r}")
    c.send("\n   \n")  # blank lines are ignored
    c.send("WHATSAT kiwi.cs.ucla.edu 10 x\n")
    expect(c.line() == "? WHATSAT kiwi.cs.ucla.edu 10 x", "blank lines were answered")
    c.close()


def whatsat_unknown(herd, _places):
    c = herd.client("A")
    c.send("WHATSAT nobody.example 10 5\n")
    got = c.line()
    expect(got == "? WHATSAT nobody.example 10 5", f"answered {got!r}")
    c.close()


def whatsat_bound0_and_no_key(herd, places):
    c = herd.client("A")
    c.send(f"IAMAT nokey {LOC} 1621464827.959498503\n")
    at = c.line()
    c.send("WHATSAT nokey 10 0\nWHATSAT nokey 10 5\n")
    for status in ("OK", "REQUEST_DENIED"):
        head, body = c.whatsat_reply()
        expect(head == at, f"stored line {head!r}, want {at!r}")
        doc = json.loads(body or "null")
        expect(doc.get("status") == status and doc.get("results") == [], f"{status}: {doc}")
        expect(body.endswith("}") and '"status" : ' in body, "JSON not in the legacy style")
    expect("HERD_CONFORMANCE_KEY" in doc.get("error_message", ""), "no-key error does not name the variable")
    # B has a key: bound 0 still makes no call.
    eventually(lambda: stored(herd, "B", "nokey") == at, "the record at B")
    expect(places.requests == 0, f"Places was called {places.requests} times with bound 0 / no key")
    c.close()


def stale_iamat(herd, _places):
    c = herd.client("A")
    c.send(f"IAMAT stale {LOC} 1621464900\n")
    newer = c.line()
    c.send("IAMAT stale +1+1 1621464800\n")
    old = c.line()
    expect(old.endswith(" stale +1+1 1621464800"), f"stale IAMAT answered {old!r}")
    expect(stored(herd, "A", "stale") == newer, "a stale IAMAT replaced the record")
    c.close()


def overlong_line(herd, _places):
    c = herd.client("A")
    c.send(b"X" * 9000 + b"\nWHATSAT nobody 1 1\n")
    got = c.line()
    expect(got == "? " + "X" * 256, f"over-long line answered {got[:40]!r}... ({len(got)} bytes)")
    expect(c.line() == "? WHATSAT nobody 1 1", "connection not usable after an over-long line")
    c.close()


def final_line_without_newline(herd, _places):
    c = herd.client("A")
    c.send("WHATSAT nobody 1 1\nIAMAT last +1+1 1")
    c.sock.shutdown(socket.SHUT_WR)
    rest = c.rest()
    expect(re.fullmatch(r"\? WHATSAT nobody 1 1\nAT A \+\d+\.\d{9} last \+1\+1 1\n", rest),
           f"got {rest!r} before close")
    c.close()


def two_hop_propagation(herd, _places):
    c = herd.client("A")
    c.send(f"IAMAT hop {LOC} {time.time():.9f}\n")
    at = c.line()
    c.close()
    eventually(lambda: stored(herd, "C", "hop") == at, "A's record at C (two hops)")
    expect(stored(herd, "B", "hop") == at, "B's record differs")


def order_behind_slow_whatsat(herd, places):
    # B has the key; `hop` reached it from A.
    eventually(lambda: stored(herd, "B", "hop"), "a record at B")
    c = herd.client("B")
    before = places.requests
    start = time.monotonic()
    c.send(f"WHATSAT hop 10 3\nIAMAT after {LOC} 1621464827.1\nWHATSAT nobody 1 1\n")
    at, body = c.whatsat_reply()
    waited = time.monotonic() - start
    expect(at.startswith("AT A ") and " hop " in at, f"first reply {at!r}, want the WHATSAT's")
    doc = json.loads(body)
    expect(doc.get("status") == "OK" and len(doc.get("results", [])) == 3, f"places reply {doc}")
    expect(doc["results"][0].get("name") == "Place 0" and doc["results"][0].get("place_id") == "place0",
           "place not mapped to legacy field names")
    expect(waited >= PLACES_DELAY * 0.9, f"WHATSAT answered in {waited:.3f} s: Places was not waited on")
    expect(re.fullmatch(r"AT B \+\d+\.\d{9} after .*", c.line()), "IAMAT reply not second")
    expect(c.line() == "? WHATSAT nobody 1 1", "invalid reply not third")
    expect(places.requests == before + 1, "not exactly one Places call")
    c.close()


def sync_after_restart(herd, _places):
    herd.kill9("C")
    c = herd.client("A")
    c.send(f"IAMAT whiledown {LOC} {time.time():.9f}\n")
    at = c.line()
    c.close()
    eventually(lambda: stored(herd, "B", "whiledown") == at, "record at B")
    herd.start("C")
    start = time.monotonic()
    eventually(lambda: stored(herd, "C", "whiledown") == at, "restarted C caught up")
    took = time.monotonic() - start
    expect(stored(herd, "C", "hop") is not None, "C lost the older record")
    print(f"      (C caught up {took * 1000:.0f} ms after it listened)")


CHECKS = [iamat_reply, invalid_echo, whatsat_unknown, whatsat_bound0_and_no_key, stale_iamat,
          overlong_line, final_line_without_newline, two_hop_propagation, order_behind_slow_whatsat,
          sync_after_restart]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    places = Places()
    threading.Thread(target=places.serve_forever, daemon=True).start()
    herd = Herd(sys.argv[1:], places)
    passed = failed = 0
    try:
        herd.start("A")
        herd.start("B", key=True)
        herd.start("C")
        for check in CHECKS:
            try:
                check(herd, places)
                print(f"PASS {check.__name__}")
                passed += 1
            except (AssertionError, OSError, EOFError, ValueError, RuntimeError) as e:
                print(f"FAIL {check.__name__}: {e}")
                failed += 1
    except RuntimeError as e:
        print(f"FAIL start-up: {e}")
        failed += 1
    finally:
        herd.stop()
        places.shutdown()
    print(f"server: {' '.join(sys.argv[1:])}")
    print(f"conformance: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
