#!/usr/bin/env python3
"""The measurement suite of issue 15: herd, the asyncio and tokio references (bench/ref/)
and Redis PING, under the same load generator (bench/loadgen), in one bounded run.

bench/report/run.sh builds everything and calls this; it writes <out>/results.json (every
raw figure, the commit, the machine) and the SVG plots, and prints a summary. Every
figure is also given as a ratio to herd and (where Redis has a counterpart) to Redis.

Why Python: the suite is orchestration (start, kill and restart servers, sample /proc,
poll sockets), not load; the load itself is loadgen's (Rust, open and closed loop).
Bounded: every child is killed by PID on exit, loadgen runs under RLIMIT_AS, and a
watchdog kills any child whose RSS passes RSS_LIMIT (see the loadgen note in REPORT.md).
"""

import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import svgplot

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LOADGEN = os.path.join(ROOT, "target/release/loadgen")
STUB = os.path.join(ROOT, "target/release/places-stub")
CMD = {
    "herd": [os.path.join(ROOT, "target/release/herd")],
    "asyncio": [sys.executable, os.path.join(ROOT, "bench/ref/asyncio/herd_asyncio.py")],
    "tokio": [os.path.join(ROOT, "bench/ref/tokio/target/release/herd-tokio")],
}
# REPORT_IMPLS=herd,asyncio runs a subset (for trying the script).
IMPLS = (os.environ.get("REPORT_IMPLS") or "herd,asyncio,tokio").split(",")
RSS_LIMIT_KIB = 3 * 1024 * 1024  # any child over 3 GiB is killed: a run must not threaten the host
LOADGEN_AS = 4 << 30  # address-space cap for loadgen

QUICK = {
    "rounds": 1, "dur": "1s", "warm": "500ms", "open_dur": "1500ms", "herd5_rounds": 1,
    "prop_trials": 20, "idle": 10000, "kill_rounds": 1,
}
FULL = {
    "rounds": 4, "dur": "3s", "warm": "1s", "open_dur": "3s", "herd5_rounds": 2,
    "prop_trials": 50, "idle": 10000, "kill_rounds": 2,
}


class Suite:
    def __init__(self, out, p):
        self.out = out
        self.p = p
        self.children = []  # every Popen we started, killed by PID at the end
        self.watch = []  # (name, Popen) the RSS watchdog looks at
        self.watchdog_kills = []
        self.stop = False
        threading.Thread(target=self.watchdog, daemon=True).start()

    # ---- processes -------------------------------------------------------------------

    def watchdog(self):
        while not self.stop:
            for name, pr in list(self.watch):
                if pr.poll() is None and rss_kib(pr.pid) > RSS_LIMIT_KIB:
                    self.watchdog_kills.append(name)
                    log(f"WATCHDOG: {name} (pid {pr.pid}) passed {RSS_LIMIT_KIB // 1024} MiB RSS: killed")
                    try:
                        pr.kill()
                    except OSError:
                        pass
            time.sleep(0.25)

    def spawn(self, name, argv, env=None, limit_as=False, stdout=None):
        def pre():
            os.setpgrp()
            if limit_as:
                resource.setrlimit(resource.RLIMIT_AS, (LOADGEN_AS, LOADGEN_AS))
        err = open(os.path.join(self.out, f"{name}.stderr"), "ab")
        pr = subprocess.Popen(argv, stdout=stdout or subprocess.DEVNULL, stderr=err,
                              env=env, preexec_fn=pre)
        self.children.append(pr)
        self.watch.append((name, pr))
        return pr

    def kill(self, pr, sig=signal.SIGTERM):
        if pr.poll() is None:
            try:
                pr.send_signal(sig)
                pr.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pr.kill()
                pr.wait()
        self.watch = [(n, q) for n, q in self.watch if q is not pr]

    def cleanup(self):
        self.stop = True
        for pr in self.children:
            if pr.poll() is None:
                try:
                    pr.kill()
                except OSError:
                    pass
        for pr in self.children:
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    # ---- herds -------------------------------------------------------------------------

    def herd_yml(self, tag, edges, names, places=None, workers=None, level="info"):
        """Writes a herd.yml for these servers and neighbour pairs; returns (path, ports)."""
        ports = {n: (free_port(), free_port()) for n in names}
        nb = {n: [] for n in names}
        for a, b in edges:
            nb[a].append(b)
            nb[b].append(a)
        lines = ["servers:"]
        for n in names:
            lines.append(f"  {n}: {{ host: 127.0.0.1, port: {ports[n][0]}, peer_port: {ports[n][1]}, "
                         f"neighbours: [{', '.join(nb[n])}] }}")
        url = places or "http://127.0.0.1:9"
        w = f", workers: {workers}" if workers else ""
        lines.append(f"places: {{ url: '{url}', timeout_ms: 30000{w} }}")
        lines.append(f"log: {{ dir: logs/{tag}, level: {level}, rotate_mb: 0 }}")
        lines.append("limits: { max_connections: 30000 }")
        lines.append("state: { dir: '' }")
        path = os.path.join(self.out, f"{tag}.yml")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path, ports

    def start(self, impl, yml, name, port, env=None):
        pr = self.spawn(f"{impl}-{name}", CMD[impl] + ["--config", yml, name], env=env)
        wait_port(port, pr)
        return pr

    def start_herd(self, impl, tag, edges, names, **kw):
        env = kw.pop("env", None)
        yml, ports = self.herd_yml(f"{impl}-{tag}", edges, names, **kw)
        procs = {n: self.start(impl, yml, n, ports[n][0], env) for n in names}
        return yml, ports, procs

    def trim_logs(self):
        # herd logs every message (as do the references): empty the logs between runs so
        # the disk holds one measurement's worth at a time.
        base = os.path.join(self.out, "logs")
        for d, _, files in os.walk(base):
            for f in files:
                if f.endswith(".log"):
                    open(os.path.join(d, f), "w").close()

    # ---- loadgen -----------------------------------------------------------------------

    def loadgen(self, args, cpu_pids=(), warm_s=0.0, tag="loadgen"):
        """Runs loadgen --json; returns its report plus `cpu_s`, the CPU seconds the
        cpu_pids used from the end of the warm-up to the end of the run."""
        path = os.path.join(self.out, f"{tag}.json")
        with open(path, "wb") as f:
            pr = self.spawn(tag, [LOADGEN] + args + ["--json", "--quiet"], limit_as=True, stdout=f)
            cpu0 = None
            if cpu_pids:
                time.sleep(warm_s)
                cpu0 = sum(cpu_s(p) for p in cpu_pids)
            pr.wait()
            cpu1 = sum(cpu_s(p) for p in cpu_pids) if cpu_pids else None
        self.watch = [(n, q) for n, q in self.watch if q is not pr]
        try:
            with open(path) as f:
                r = json.load(f)
        except (OSError, ValueError):
            r = {"failed": True, "throughput": 0, "requests": 0, "errors_total": -1,
                 "latency_us": {}}
        if cpu0 is not None:
            r["cpu_s"] = cpu1 - cpu0
        return r


# ---- small helpers -----------------------------------------------------------------------

def log(msg):
    print(f"== {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, pr=None, deadline_s=30):
    end = time.time() + deadline_s
    while time.time() < end:
        if pr is not None and pr.poll() is not None:
            raise RuntimeError(f"server exited ({pr.returncode}) before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port} after {deadline_s} s")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    """CPU time of a process (all its threads), in seconds: the sum of its threads'
    schedstat run times (nanoseconds), since utime+stime in /proc/<pid>/stat counts in
    clock ticks (10 ms), too coarse for a few hundred updates; stat when schedstat is
    missing (a kernel without CONFIG_SCHEDSTATS)."""
    total, seen = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    seen = True
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return 0.0
    if seen:
        return total / 1e9
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0.0
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rng(xs):
    xs = [x for x in xs if x is not None]
    return [min(xs), max(xs)] if xs else None


def lat(r, k):
    v = r.get("latency_us", {}).get(k)
    return v / 1000 if v is not None else None


class Lines:
    """A line-oriented client socket: what `nc` would do."""

    def __init__(self, port, timeout=5):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, text):
        self.s.sendall(text.encode())

    def line(self):
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError("closed")
            self.buf += d
        ln, self.buf = self.buf.split(b"\n", 1)
        return ln.decode(errors="replace")

    def whatsat0(self, client):
        """WHATSAT client 10 0: the stored AT line, or None when the server has none."""
        first = self.line()
        if first.startswith("? "):
            return None
        while self.line() != "":  # the JSON and its blank line
            pass
        return first

    def close(self):
        self.s.close()


# ---- the measurements --------------------------------------------------------------------

def one_server(su, p, redis_port):
    """Closed loop at pipeline 1 and 16 (interleaved rounds) and open loop at 25/50/75%
    of each server's own maximum, on one server each; CPU per request on the way."""
    res = {"closed": {}, "open": {}}
    procs, ports = {}, {}
    for impl in IMPLS:
        yml, pp, pr = su.start_herd(impl, "solo", [], ["Solo"])
        procs[impl], ports[impl] = pr["Solo"], pp["Solo"][0]
    targets = list(IMPLS) + (["redis"] if redis_port else [])
    pids = {i: procs[i].pid for i in IMPLS}
    if redis_port:
        pids["redis"] = su.redis.pid
        ports["redis"] = redis_port

    def load(t):
        if t == "redis":
            return ["--addr", f"127.0.0.1:{redis_port}", "--workload", "raw", "--line", "PING",
                    "--expect", "+PONG"]
        return ["--addr", f"127.0.0.1:{ports[t]}", "--workload", "iamat"]

    warm_s = parse_s(p["warm"])
    for d in (1, 16):
        res["closed"][d] = {t: [] for t in targets}
    for rnd in range(p["rounds"]):
        for d in (1, 16):
            for t in targets:
                log(f"closed loop round {rnd + 1}/{p['rounds']} pipeline {d}: {t}")
                r = su.loadgen(load(t) + ["-c", "50", "-d", str(d), "--warmup", p["warm"],
                                          "--duration", p["dur"]],
                               cpu_pids=[pids[t]], warm_s=warm_s, tag=f"closed-{t}-p{d}-r{rnd}")
                res["closed"][d][t].append(slim(r))
                su.trim_logs()
    # Each server's own maximum: the best median closed-loop throughput.
    mx = {t: max(med([r["throughput"] for r in res["closed"][d][t]]) or 0 for d in (1, 16))
          for t in targets}
    res["max"] = mx
    for frac in (25, 50, 75):
        res["open"][frac] = {t: [] for t in targets}
    # Also one rate for all: half the slowest reference's maximum, a load every server
    # can carry, so the latencies compare at the same work.
    common = max(100, int(min(mx[t] for t in IMPLS) / 2))
    res["common_rate"] = common
    res["open"]["common"] = {t: [] for t in targets}
    for rnd in range(max(1, p["rounds"] - 1)):
        for frac in (25, 50, 75, "common"):
            for t in targets:
                rate = common if frac == "common" else max(100, int(mx[t] * frac / 100))
                log(f"open loop round {rnd + 1} {frac}% = {rate}/s: {t}")
                r = su.loadgen(load(t) + ["-c", "50", "-d", "16", "--rate", str(rate),
                                          "--warmup", p["warm"], "--duration", p["open_dur"]],
                               tag=f"open-{t}-{frac}-r{rnd}")
                r = slim(r)
                r["rate"] = rate
                res["open"][frac][t].append(r)
                su.trim_logs()
    for impl in IMPLS:
        su.kill(procs[impl])
    return res


def slim(r):
    """The figures of a loadgen report, without its percentile spectrum."""
    keep = ("throughput", "requests", "latency_us", "errors_total", "cpu_s", "unsent",
            "send_lateness_us", "aborted", "failed", "propagated", "trials", "idle")
    return {k: r[k] for k in keep if k in r}


FIVE = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"]
FIVE_EDGES = [("Bailey", "Bona"), ("Bailey", "Campbell"), ("Bona", "Campbell"),
              ("Bona", "Clark"), ("Campbell", "Jaquez"), ("Clark", "Jaquez")]


def five_servers(su, p):
    """The five-server herd of herd.yml, every server loaded, records flooding: closed-loop
    throughput and p99, propagation Bailey -> Jaquez (two hops) idle and under load."""
    res = {t: {"p1": [], "p16": [], "prop_idle": [], "prop_load": [], "cpu_per_req_us": []}
           for t in IMPLS}
    warm_s = parse_s(p["warm"])
    for rnd in range(p["herd5_rounds"]):
        for impl in IMPLS:
            yml, ports, procs = su.start_herd(impl, f"five{rnd}", FIVE_EDGES, FIVE)
            time.sleep(0.5)  # links up
            pids = [pr.pid for pr in procs.values()]
            log(f"five-server herd round {rnd + 1}: {impl}: propagation, idle")
            r = su.loadgen(["--workload", "propagation", "--config", yml, "--from", "Bailey",
                            "--to", "Jaquez", "--trials", str(p["prop_trials"]),
                            "--timeout", "5s", "--duration", "60s"], tag=f"prop-{impl}-r{rnd}")
            res[impl]["prop_idle"].append(slim(r))
            for d in (1, 16):
                log(f"five-server herd round {rnd + 1}: {impl}: closed loop pipeline {d}")
                args = ["--config", yml, "--workload", "iamat", "-c", "50", "-d", str(d),
                        "--warmup", p["warm"], "--duration", p["dur"]]
                if d == 1:
                    # Propagation measured while the herd is under that load.
                    ppath = os.path.join(su.out, f"propload-{impl}-r{rnd}.json")
                    with open(ppath, "wb") as f:
                        prop = su.spawn("prop", [LOADGEN, "--workload", "propagation", "--config", yml,
                                                 "--from", "Bailey", "--to", "Jaquez",
                                                 "--trials", str(p["prop_trials"]), "--timeout", "5s",
                                                 "--duration", "60s", "--json", "--quiet"],
                                        limit_as=True, stdout=f)
                r = su.loadgen(args, cpu_pids=pids, warm_s=warm_s, tag=f"five-{impl}-p{d}-r{rnd}")
                if d == 1:
                    try:
                        prop.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        su.kill(prop)
                    try:
                        with open(ppath) as f:
                            res[impl]["prop_load"].append(slim(json.load(f)))
                    except (OSError, ValueError):
                        pass
                r = slim(r)
                if r.get("requests"):
                    res[impl]["cpu_per_req_us"].append(r["cpu_s"] / r["requests"] * 1e6)
                res[impl][f"p{d}"].append(r)
                su.trim_logs()
            for pr in procs.values():
                su.kill(pr)
    return res


def idle_memory(su, p, redis_bin):
    """RSS growth of a fresh server while loadgen holds 10,000 idle connections to it."""
    res = {}
    n = p["idle"]
    for t in IMPLS + (["redis"] if redis_bin else []):
        if t == "redis":
            port = free_port()
            pr = su.spawn("redis-idle", [redis_bin, "--bind", "127.0.0.1", "--port", str(port),
                                         "--save", "", "--appendonly", "no", "--maxclients", "30000",
                                         "--loglevel", "warning"])
            wait_port(port, pr)
            load = ["--workload", "raw", "--line", "PING", "--expect", "+PONG"]
        else:
            yml, ports, procs = su.start_herd(t, "idle", [], ["Solo"])
            pr, port = procs["Solo"], ports["Solo"][0]
            load = ["--workload", "iamat"]
        time.sleep(0.3)
        base = rss_kib(pr.pid)
        peak = [base]
        lg = threading.Event()

        def sample():
            while not lg.is_set():
                peak[0] = max(peak[0], rss_kib(pr.pid))
                time.sleep(0.1)
        th = threading.Thread(target=sample)
        th.start()
        log(f"memory per idle connection ({n}): {t}")
        r = su.loadgen(["--addr", f"127.0.0.1:{port}", "-c", "1", "--rate", "50", "--idle", str(n),
                        "--warmup", "1s", "--duration", "2s", "--timeout", "10s"] + load,
                       tag=f"idle-{t}")
        lg.set()
        th.join()
        opened = (r.get("idle") or {}).get("still_open", 0)
        res[t] = {"base_kib": base, "peak_kib": peak[0], "opened": opened,
                  "bytes_per_conn": (peak[0] - base) * 1024 / opened if opened else None}
        su.kill(pr)
    return res


def whatsat_wait(su, p):
    """IAMAT p99 on one server while 100 WHATSATs wait on a Places imitation that answers
    each call after 1 s."""
    res = {}
    stub = su.spawn("places-stub", [STUB, "--delay-ms", "1000"], stdout=subprocess.PIPE)
    url = stub.stdout.readline().decode().strip()
    env = dict(os.environ, GOOGLE_PLACES_API_KEY="dummy-not-a-key")
    for t in IMPLS:
        # 128 workers so herd has the 100 calls in flight at once, as the references do
        # (their concurrency is unbounded); with the default 4 herd would queue 96.
        yml, ports, procs = su.start_herd(t, "whatsat", [], ["Solo"], places=url, workers=128,
                                          env=env)
        port = ports["Solo"][0]
        log(f"IAMAT under 100 waiting WHATSATs: {t}")
        wpath = os.path.join(su.out, f"whatsat-{t}.json")
        with open(wpath, "wb") as f:
            w = su.spawn("whatsat-load", [LOADGEN, "--addr", f"127.0.0.1:{port}", "--workload",
                                          "whatsat", "--clients", "100", "-c", "100", "-d", "1",
                                          "--warmup", "1s", "--duration", "6s", "--timeout", "30s",
                                          "--seed", "7", "--json", "--quiet"],
                         limit_as=True, stdout=f)
        time.sleep(1.5)
        r = su.loadgen(["--addr", f"127.0.0.1:{port}", "--workload", "iamat", "--clients", "1000",
                        "--seed", "3", "-c", "10", "-d", "16", "--rate", "2000", "--warmup", "500ms",
                        "--duration", "4s"], tag=f"whatsat-iamat-{t}")
        w.wait(timeout=60)
        try:
            with open(wpath) as f:
                wr = slim(json.load(f))
        except (OSError, ValueError):
            wr = {}
        res[t] = {"iamat": slim(r), "whatsat": wr}
        su.kill(procs["Solo"])
        su.trim_logs()
    su.kill(stub)
    return res


def kill_restart(su, p):
    """A pair A - B; open-loop IAMATs at A; B is SIGKILLed, a probe record is written at A,
    B is restarted: the time from B's restart until B has the probe and every one of 100
    sampled clients A knows (the table sync), while the load goes on."""
    res = {t: [] for t in IMPLS}
    for rnd in range(p["kill_rounds"]):
        for t in IMPLS:
            yml, ports, procs = su.start_herd(t, f"kill{rnd}", [("A", "B")], ["A", "B"])
            pa, pb = ports["A"][0], ports["B"][0]
            log(f"neighbour killed and restarted under load, round {rnd + 1}: {t}")
            lpath = os.path.join(su.out, f"kill-load-{t}-r{rnd}.json")
            with open(lpath, "wb") as f:
                lg = su.spawn("kill-load", [LOADGEN, "--addr", f"127.0.0.1:{pa}", "--workload",
                                            "iamat", "--clients", "10000", "-c", "10", "-d", "16",
                                            "--rate", "2000", "--warmup", "500ms", "--duration", "9s",
                                            "--json", "--quiet"], limit_as=True, stdout=f)
            time.sleep(3)
            su.kill(procs["B"], signal.SIGKILL)
            time.sleep(1)
            a = Lines(pa)
            probe_t = f"{time.time():.9f}"
            a.send(f"IAMAT probe-{t}-{rnd} +34.068930-118.445127 {probe_t}\n")
            a.line()
            sample = [f"lg-{j}" for j in random.Random(rnd).sample(range(10000), 300)]
            a.send("".join(f"WHATSAT {c} 10 0\n" for c in sample))
            known = [c for c in sample if a.whatsat0(c) is not None][:100]
            a.close()
            t0 = time.time()
            procs["B"] = su.start(t, yml, "B", pb)
            t_listen = time.time() - t0
            caught = None
            b = Lines(pb)
            want = [f"probe-{t}-{rnd}"] + known
            while time.time() - t0 < 20:
                b.send("".join(f"WHATSAT {c} 10 0\n" for c in want))
                got = [b.whatsat0(c) for c in want]
                if all(g is not None for g in got) and probe_t in (got[0] or ""):
                    caught = time.time() - t0
                    break
                time.sleep(0.005)
            b.close()
            lg.wait(timeout=30)
            try:
                with open(lpath) as f:
                    lr = slim(json.load(f))
            except (OSError, ValueError):
                lr = {}
            res[t].append({"caught_up_s": caught, "listening_s": t_listen, "sampled": len(known),
                           "load": lr})
            for pr in procs.values():
                su.kill(pr)
            su.trim_logs()
    return res


def parse_s(t):
    for unit, k in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * k
    return float(t)


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "model": model, "loadavg_start": os.getloadavg(),
            "mem_total_kib": int(open("/proc/meminfo").readline().split()[1])}


def main():
    quick = "--quick" in sys.argv
    p = QUICK if quick else FULL
    out = os.environ.get("REPORT_OUT") or tempfile.mkdtemp(prefix="herd-report.")
    os.makedirs(out, exist_ok=True)
    os.chdir(out)  # the herd.yml files say log dir `logs/...`, relative to themselves
    su = Suite(out, p)
    t_start = time.time()
    results = {"mode": "quick" if quick else "full", "params": p, "machine": machine(),
               "commit": os.environ.get("REPORT_COMMIT", "unknown"),
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    redis_bin = os.environ.get("REDIS_SERVER") or None
    try:
        su.redis = None
        redis_port = None
        if redis_bin:
            redis_port = free_port()
            su.redis = su.spawn("redis", [redis_bin, "--bind", "127.0.0.1", "--port", str(redis_port),
                                          "--save", "", "--appendonly", "no", "--loglevel", "warning"])
            wait_port(redis_port, su.redis)
        results["one_server"] = one_server(su, p, redis_port)
        if su.redis:
            su.kill(su.redis)
        results["five_servers"] = five_servers(su, p)
        results["idle_memory"] = idle_memory(su, p, redis_bin)
        results["whatsat_wait"] = whatsat_wait(su, p)
        results["kill_restart"] = kill_restart(su, p)
    finally:
        su.cleanup()
    results["elapsed_s"] = round(time.time() - t_start, 1)
    results["loadavg_end"] = os.getloadavg()
    results["watchdog_kills"] = su.watchdog_kills
    results["summary"] = summarise(results)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plots(results, out)
    print_summary(results)
    print(f"results: {out}/results.json", file=sys.stderr)


def ratios(fig, higher_better=True):
    """Adds x/herd and x/redis to a {server: value} dict."""
    h = fig.get("herd")
    r = fig.get("redis")
    return {t: {"value": v,
                "vs_herd": (v / h) if (v is not None and h) else None,
                "vs_redis": (v / r) if (v is not None and r) else None}
            for t, v in fig.items()}


def summarise(res):
    s = {}
    one = res["one_server"]
    for d in (1, 16):
        runs = one["closed"][d]
        s[f"closed_p{d}_tput"] = ratios({t: med([r["throughput"] for r in rs]) for t, rs in runs.items()})
        s[f"closed_p{d}_tput_range"] = {t: rng([r["throughput"] for r in rs]) for t, rs in runs.items()}
        for k in ("p50", "p99", "p99_9"):
            s[f"closed_p{d}_{k}_ms"] = ratios({t: med([lat(r, k) for r in rs]) for t, rs in runs.items()})
        # CPU per request from the pipeline-16 (saturating) runs, and pipeline 1.
        s[f"cpu_us_per_req_p{d}"] = ratios({t: med([r["cpu_s"] / r["requests"] * 1e6 for r in rs
                                                    if r.get("requests")]) for t, rs in runs.items()})
    for frac, runs in one["open"].items():
        for k in ("p99", "p99_9"):
            s[f"open{frac}_{k}_ms"] = ratios({t: med([lat(r, k) for r in rs]) for t, rs in runs.items()})
        s[f"open{frac}_rate"] = {t: rs[0]["rate"] for t, rs in runs.items()}
    five = res["five_servers"]
    for d in (1, 16):
        s[f"five_p{d}_tput"] = ratios({t: med([r["throughput"] for r in v[f"p{d}"]]) for t, v in five.items()})
        s[f"five_p{d}_p99_ms"] = ratios({t: med([lat(r, "p99") for r in v[f"p{d}"]]) for t, v in five.items()})
    s["five_cpu_us_per_req"] = ratios({t: med(v["cpu_per_req_us"]) for t, v in five.items()})
    for k in ("prop_idle", "prop_load"):
        s[f"five_{k}_p50_ms"] = ratios({t: med([lat(r, "p50") for r in v[k]]) for t, v in five.items()})
        s[f"five_{k}_p99_ms"] = ratios({t: med([lat(r, "p99") for r in v[k]]) for t, v in five.items()})
    s["idle_bytes_per_conn"] = ratios({t: v["bytes_per_conn"] for t, v in res["idle_memory"].items()})
    ww = res["whatsat_wait"]
    s["whatsat_wait_iamat_p99_ms"] = ratios({t: lat(v["iamat"], "p99") for t, v in ww.items()})
    s["whatsat_wait_iamat_p99_9_ms"] = ratios({t: lat(v["iamat"], "p99_9") for t, v in ww.items()})
    s["whatsat_wait_whatsat_per_s"] = ratios({t: v["whatsat"].get("throughput") for t, v in ww.items()})
    kr = res["kill_restart"]
    s["kill_restart_caught_up_s"] = ratios({t: med([x["caught_up_s"] for x in v]) for t, v in kr.items()})
    s["kill_restart_listening_s"] = ratios({t: med([x["listening_s"] for x in v]) for t, v in kr.items()})
    return s


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


def print_summary(res):
    s = res["summary"]
    m = res["machine"]
    print(f"commit {res['commit']}, {m['nproc']} x {m['model']}, load {m['loadavg_start']} -> "
          f"{res['loadavg_end']}, {res['mode']} run, {res['elapsed_s']} s")
    print(f"{'figure':32} {'server':8} {'value':>10} {'/herd':>7} {'/redis':>7}")
    for k, fig in s.items():
        if not isinstance(fig, dict) or not all(isinstance(x, dict) and "value" in x for x in fig.values()):
            continue
        for t, v in fig.items():
            print(f"{k:32} {t:8} {fmt(v['value']):>10} {fmt(v['vs_herd']):>7} {fmt(v['vs_redis']):>7}")


def plots(res, out):
    s = res["summary"]
    order = ["herd", "asyncio", "tokio", "redis"]

    def bars(keys, labels, title, unit, name):
        series = {t: [(s[k].get(t) or {}).get("value") for k in keys] for t in order
                  if any(t in s[k] for k in keys)}
        svgplot.grouped_bars(os.path.join(out, name), title, labels, series, unit)
    bars(["closed_p1_tput", "closed_p16_tput"], ["pipeline 1", "pipeline 16"],
         "One server, closed loop, 50 connections: throughput", "requests/s", "throughput.svg")
    bars(["closed_p1_p99_ms", "closed_p16_p99_ms", "closed_p16_p99_9_ms"],
         ["p99, pipeline 1", "p99, pipeline 16", "p99.9, pipeline 16"],
         "One server, closed loop: latency", "ms", "closed_latency.svg")
    bars([f"open{f}_p99_ms" for f in (25, 50, 75)] + [f"open{f}_p99_9_ms" for f in (25, 50, 75)],
         ["p99 @25%", "p99 @50%", "p99 @75%", "p99.9 @25%", "p99.9 @50%", "p99.9 @75%"],
         "Open loop at a share of each server's own maximum", "ms", "open_loop.svg")
    bars(["opencommon_p99_ms", "opencommon_p99_9_ms"], ["p99", "p99.9"],
         f"Open loop, every server at the same {res['one_server']['common_rate']} requests/s",
         "ms", "open_common.svg")
    bars(["five_p1_tput", "five_p16_tput"], ["pipeline 1", "pipeline 16"],
         "Five-server herd, flooding: throughput", "requests/s", "five_throughput.svg")
    bars(["five_prop_idle_p50_ms", "five_prop_idle_p99_ms", "five_prop_load_p50_ms", "five_prop_load_p99_ms"],
         ["idle p50", "idle p99", "loaded p50", "loaded p99"],
         "Propagation Bailey -> Jaquez (two hops)", "ms", "propagation.svg")
    bars(["idle_bytes_per_conn"], ["10,000 idle connections"],
         "Memory per idle connection", "bytes", "idle_memory.svg")
    bars(["cpu_us_per_req_p16", "five_cpu_us_per_req"], ["one server, pipeline 16", "five-server herd"],
         "CPU time per request", "us", "cpu.svg")
    bars(["whatsat_wait_iamat_p99_ms", "whatsat_wait_iamat_p99_9_ms"], ["IAMAT p99", "IAMAT p99.9"],
         "IAMAT latency while 100 WHATSATs wait 1 s on Places", "ms", "whatsat_wait.svg")
    bars(["kill_restart_caught_up_s"], ["restart to caught up"],
         "Neighbour killed and restarted under load", "s", "restart.svg")


if __name__ == "__main__":
    main()
