#!/usr/bin/env python3
"""Measures a new link's table sync (SPEC §5: streamed, so the sender's memory does not grow
by the size of the table): server A takes N client IAMATs over loopback, then its neighbour
B starts; prints how long A's sync of N records took (A's "link to B ... up" line to B's
last "record from A (new)" line) and how much A's resident memory grew meanwhile.

    cargo build --release && bench/sync_1m.py [--clients 1000000] [--bin target/release/herd]

Loopback only; both servers are killed at the end.
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mem_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def wait_port(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {port}")


def stamp(line):
    ts = line.split(" ", 1)[0].rstrip("Z")
    whole, _, frac = ts.partition(".")
    t = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return t + float("0." + (frac or "0"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1_000_000)
    ap.add_argument("--bin", default="target/release/herd")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="herd-sync-")
    pa, ppa, pb, ppb = (free_port() for _ in range(4))
    with open(os.path.join(d, "herd.yml"), "w") as f:
        f.write(
            f"servers:\n  A: {{ host: 127.0.0.1, port: {pa}, peer_port: {ppa}, neighbours: [B] }}\n"
            f"  B: {{ host: 127.0.0.1, port: {pb}, peer_port: {ppb}, neighbours: [A] }}\n"
            "log: { dir: logs, level: info }\n"
        )
    procs = []

    def start(name):
        p = subprocess.Popen([os.path.abspath(args.bin), "--config", "herd.yml", name], cwd=d,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        a = start("A")
        wait_port(pa)
        s = socket.create_connection(("127.0.0.1", pa))
        now = int(time.time())
        got = [0]

        def read():
            while got[0] < args.clients:
                b = s.recv(1 << 20)
                if not b:
                    break
                got[0] += b.count(b"\n")

        r = threading.Thread(target=read)
        r.start()
        t = time.time()
        batch = []
        for i in range(args.clients):
            batch.append(f"IAMAT client-{i:07d} +34.068930-118.445127 {now}.{i:09d}\n")
            if len(batch) == 4096:
                s.sendall("".join(batch).encode())
                batch = []
        s.sendall("".join(batch).encode())
        r.join()
        print(f"A took {args.clients} IAMATs in {time.time() - t:.1f} s")
        rss0, hwm0 = mem_kib(a.pid, "VmRSS"), mem_kib(a.pid, "VmHWM")
        start("B")
        blog = os.path.join(d, "logs", "B.log")
        peak, last_size, still = rss0, -1, 0
        # Done when B's log has stopped growing for a second.
        while still < 50:
            peak = max(peak, mem_kib(a.pid, "VmRSS"))
            size = os.path.getsize(blog) if os.path.exists(blog) else 0
            still = still + 1 if size == last_size else 0
            last_size = size
            time.sleep(0.02)
        hwm1 = mem_kib(a.pid, "VmHWM")
        up = None
        with open(os.path.join(d, "logs", "A.log")) as f:
            for line in f:
                if "link to B" in line and ": up;" in line:
                    up = stamp(line)
        new, last = 0, None
        with open(blog) as f:
            for line in f:
                if "record from A (new)" in line:
                    new += 1
                    last = line
        if up is None or last is None:
            sys.exit("no sync seen in the logs")
        print(f"sync of {new} records (of {args.clients}): {stamp(last) - up:.2f} s")
        print(f"A's RSS before the sync {rss0 / 1024:.1f} MiB; peak while syncing {peak / 1024:.1f} MiB "
              f"(+{(peak - rss0) / 1024:.1f} MiB); VmHWM {hwm0 / 1024:.1f} -> {hwm1 / 1024:.1f} MiB")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
