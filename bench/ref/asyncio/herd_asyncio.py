#!/usr/bin/env python3
"""herd's SPEC §2-§3 in Python asyncio: a reference server for bench/report.

What a competent engineer writes in a day with the framework the original project
evaluated: asyncio streams for clients and peer links, aiohttp for Places, PyYAML for
herd.yml, the standard logging module writing one line per message to logs/<Name>.log.
No heroic optimisation; not part of the product.

    python3 herd_asyncio.py [--config herd.yml] NAME
"""

import argparse
import asyncio
import json
import logging
import os
import random
import re
import signal
import sys
import time
from decimal import Decimal

import aiohttp
import yaml

LOCATION = re.compile(rb"([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")
TIME = re.compile(rb"(\d{1,12})(?:\.(\d+))?")
DECIMAL = re.compile(rb"\d+(?:\.\d+)?")
DIFF = re.compile(rb"[+-]\d+\.\d{9}")
NEW_PATH = "/v1/places:searchNearby"
LEGACY_PATH = "/maps/api/place/nearbysearch/json"
FIELD_MASK = ("places.displayName,places.id,places.location,places.formattedAddress,"
              "places.types,places.rating,places.userRatingCount,places.businessStatus")
LINK_QUEUE_LIMIT = 8 << 20  # bytes queued to a neighbour that does not read
READ_SIZE = 64 * 1024

log = logging.getLogger("herd")


def shown(b):
    """Bytes as one printable log line."""
    s = b.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


# ---- protocol: pure functions over bytes --------------------------------------------

def parse_location(text):
    m = LOCATION.fullmatch(text)
    if not m:
        return None
    lat, lng = Decimal(m[1].decode()), Decimal(m[2].decode())
    if abs(lat) > 90 or abs(lng) > 180:
        return None
    return lat, lng


def parse_time_ns(text):
    m = TIME.fullmatch(text)
    if not m:
        return None
    frac = (m[2] or b"")[:9].ljust(9, b"0")
    return int(m[1]) * 1_000_000_000 + int(frac)


def format_diff(ns):
    sign = "+" if ns >= 0 else "-"
    ns = abs(ns)
    return f"{sign}{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}".encode()


def parse_record(line, servers):
    """An AT line from a neighbour -> (client, time_ns, canonical line), or None."""
    f = line.split()
    if (len(f) != 6 or f[0] != b"AT" or f[1].decode("utf-8", "replace") not in servers
            or not DIFF.fullmatch(f[2]) or parse_location(f[4]) is None):
        return None
    t = parse_time_ns(f[5])
    if t is None:
        return None
    return f[3], t, b" ".join(f)


def legacy_json(doc):
    """Google's legacy print style: 3-space indent, `"key" : value`, UTF-8 as is."""
    return json.dumps(doc, indent=3, separators=(",", " : "), ensure_ascii=False)


def document(status, message=None, results=()):
    doc = {"html_attributions": [], "results": list(results), "status": status}
    if message:
        doc["error_message"] = message
    return doc


# ---- the server ---------------------------------------------------------------------

class Herd:
    def __init__(self, name, cfg, cfg_dir):
        self.name = name
        self.servers = cfg["servers"]
        me = self.servers[name]
        self.host = me.get("host", "127.0.0.1")
        self.port = me["port"]
        self.peer_port = me["peer_port"]
        self.neighbours = list(me.get("neighbours") or [])
        places = cfg.get("places") or {}
        self.api = os.environ.get("HERD_PLACES_API") or places.get("api", "new")
        default_url = "https://maps.googleapis.com" if self.api == "legacy" else "https://places.googleapis.com"
        self.places_url = (os.environ.get("HERD_PLACES_URL") or places.get("url") or default_url).rstrip("/")
        self.key_env = places.get("key_env", "GOOGLE_PLACES_API_KEY")
        self.key = os.environ.get(self.key_env) or None
        self.timeout = places.get("timeout_ms", 5000) / 1000
        self.max_line = (cfg.get("limits") or {}).get("max_line", 8192)
        self.table = {}  # client -> (time_ns, AT line)
        self.links = {n: None for n in self.neighbours}  # outbound StreamWriter when up
        self.inbound = {}  # neighbour -> its current inbound StreamWriter
        self.dial_now = {n: asyncio.Event() for n in self.neighbours}
        self.http = None

    # -- table and flooding --

    def offer(self, client, t, line, source=None):
        """Stores a winning record and forwards it; returns the neighbours it went to."""
        old = self.table.get(client)
        if old is not None and (t, line) <= old:
            return None
        self.table[client] = (t, line)
        sent = []
        for n, w in self.links.items():
            if n == source or w is None:
                continue
            w.write(line + b"\n")
            if w.transport.get_write_buffer_size() > max(LINK_QUEUE_LIMIT, 2 * len(self.table) * 100):
                log.warning("link to %s: dropped: neighbour does not read", n)
                w.transport.abort()
                continue
            sent.append(n)
        return sent

    # -- clients --

    async def client(self, reader, writer):
        peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        log.info("%s connected", peer)
        pending = []  # replies in message order: bytes, or a Task making one
        flusher = None

        async def flush_pending():
            while pending:
                item = pending[0]
                data = await item if isinstance(item, asyncio.Task) else item
                pending.pop(0)
                writer.write(data)
                await writer.drain()

        def reply(data):
            if pending:  # behind a WHATSAT that waits on Places
                pending.append(data)
            else:
                writer.write(data)

        def defer(task):
            nonlocal flusher
            pending.append(task)
            if flusher is None or flusher.done():
                flusher = asyncio.ensure_future(flush_pending())

        try:
            async for line in self.lines(reader):
                if isinstance(line, tuple):  # over-long: (head,)
                    log.info("%s recv: over-long line | sent: ? %s", peer, shown(line[0]))
                    reply(b"? " + line[0] + b"\n")
                    continue
                out = self.on_client_line(peer, line)
                if isinstance(out, asyncio.Task):
                    defer(out)
                elif out is not None:
                    reply(out)
                await writer.drain()
            if flusher is not None:
                await flusher
            await writer.drain()
        except (ConnectionError, OSError) as e:
            log.info("%s closed: %s", peer, e)
        else:
            log.info("%s closed: end of input", peer)
        finally:
            if flusher is not None:
                flusher.cancel()
            writer.close()

    async def lines(self, reader):
        """Lines without their terminator; an over-long line yields (first 256 bytes,)."""
        buf = b""
        skipping = False
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                if buf and not skipping:
                    yield buf[:-1] if buf.endswith(b"\r") else buf
                return
            buf += chunk
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    if len(buf) > self.max_line + 1 and not skipping:
                        yield (buf[:256],)
                        skipping = True
                    if skipping:
                        buf = b""
                    break
                line, buf = buf[:i], buf[i + 1:]
                if skipping:
                    skipping = False
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > self.max_line:
                    yield (line[:256],)
                else:
                    yield line

    def on_client_line(self, peer, line):
        """bytes to send, a Task that makes them, or None for a blank line."""
        f = line.split()
        if not f:
            return None
        if f[0] == b"IAMAT" and len(f) == 4:
            now = time.time_ns()
            t = parse_time_ns(f[3])
            if t is not None and parse_location(f[2]) is not None:
                at = b" ".join([b"AT", self.name.encode(), format_diff(now - t), f[1], f[2], f[3]])
                sent = self.offer(f[1], t, at)
                to = " | forwarded to " + ", ".join(sent) if sent else ""
                log.info("%s recv: %s | sent: %s%s", peer, shown(line), shown(at), to)
                return at + b"\n"
        elif f[0] == b"WHATSAT" and len(f) == 4:
            r, b = f[2], f[3]
            rec = self.table.get(f[1])
            if (rec and DECIMAL.fullmatch(r) and 0 < Decimal(r.decode()) <= 50
                    and b.isdigit() and int(b) <= 20):
                at = rec[1]
                if int(b) == 0 or self.key is None:
                    doc = (document("OK") if int(b) == 0 else document(
                        "REQUEST_DENIED", f"no Places API key: set the environment variable "
                        f"{self.key_env} and restart the server"))
                    body = legacy_json(doc).encode()
                    log.info("%s recv: %s | sent: %s (+%d bytes of JSON)", peer, shown(line), shown(at), len(body))
                    return at + b"\n" + body + b"\n\n"
                log.info("%s recv: %s | waiting on Places", peer, shown(line))
                lat, lng = parse_location(at.split()[4])
                metres = Decimal(r.decode()) * 1000
                return asyncio.ensure_future(self.whatsat(at, lat, lng, metres, int(b)))
        log.info("%s recv: %s | sent: ? %s", peer, shown(line), shown(line))
        return b"? " + line + b"\n"

    # -- Places --

    async def whatsat(self, at, lat, lng, metres, bound):
        start = time.monotonic()
        try:
            doc = await self.places(lat, lng, metres, bound)
        except asyncio.TimeoutError:
            doc = document("UNKNOWN_ERROR", "Places request timed out")
        except aiohttp.ClientError as e:
            doc = document("UNKNOWN_ERROR", f"Places request failed: {type(e).__name__}")
        except ValueError:
            doc = document("UNKNOWN_ERROR", "Places answered with a body that is not JSON")
        if isinstance(doc.get("results"), list):
            doc["results"] = doc["results"][:bound]
        log.info("places %s %s,%s radius %s m bound %d: %s, %d results, %d ms", self.api, lat, lng,
                 metres.normalize(), bound, doc.get("status"), len(doc.get("results") or []),
                 (time.monotonic() - start) * 1000)
        return at + b"\n" + legacy_json(doc).encode() + b"\n\n"

    async def places(self, lat, lng, metres, bound):
        if self.api == "legacy":
            params = {"location": f"{lat},{lng}", "radius": str(metres.normalize()), "key": self.key}
            async with self.http.get(self.places_url + LEGACY_PATH, params=params,
                                     allow_redirects=False) as r:
                return json.loads(await r.read())
        body = {"maxResultCount": bound, "locationRestriction": {"circle": {
            "center": {"latitude": float(lat), "longitude": float(lng)}, "radius": float(metres)}}}
        headers = {"X-Goog-Api-Key": self.key, "X-Goog-FieldMask": FIELD_MASK}
        async with self.http.post(self.places_url + NEW_PATH, json=body, headers=headers,
                                  allow_redirects=False) as r:
            got = json.loads(await r.read())
            if r.status != 200:
                status = {400: "INVALID_REQUEST", 401: "REQUEST_DENIED", 403: "REQUEST_DENIED",
                          429: "OVER_QUERY_LIMIT"}.get(r.status, "UNKNOWN_ERROR")
                msg = (got.get("error") or {}).get("message") or f"Places answered HTTP {r.status}"
                return document(status, msg)
        results = [legacy_place(p) for p in got.get("places") or []]
        return document("OK" if results else "ZERO_RESULTS", None, results)

    # -- peer links --

    async def peer_in(self, reader, writer):
        peer = "%s:%s" % writer.get_extra_info("peername")[:2]
        first = await reader.readline()
        f = first.split()
        name = f[1].decode("utf-8", "replace") if len(f) == 2 and f[0] == b"HELLO" else None
        if name not in self.neighbours:
            log.info("%s (peer port) refused: %s", peer, shown(first.rstrip(b"\r\n")))
            writer.write(b"? " + first.rstrip(b"\r\n") + b"\n")
            await writer.drain()
            writer.close()
            return
        log.info("link from %s (%s): up (HELLO)", name, peer)
        old = self.inbound.get(name)
        if old is not None:
            old.close()
        self.inbound[name] = writer
        if self.links[name] is None:
            self.dial_now[name].set()
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                rec = parse_record(line, self.servers)
                if rec is None:
                    log.warning("record from %s skipped: malformed: %s", name, shown(line.rstrip()))
                    continue
                client, t, canon = rec
                sent = self.offer(client, t, canon, source=name)
                if sent is None:
                    log.info("record from %s (not newer, dropped): %s", name, shown(canon))
                else:
                    log.info("record from %s (new): %s | forwarded to %s", name, shown(canon),
                             ", ".join(sent) or "nobody")
        except (ConnectionError, OSError, ValueError) as e:
            log.info("link from %s (%s): dropped: %s", name, peer, e)
        finally:
            if self.inbound.get(name) is writer:
                del self.inbound[name]
            writer.close()

    async def dialler(self, n):
        """Keeps the outbound link to neighbour n up, with capped exponential backoff."""
        spec = self.servers[n]
        backoff = 0.05
        while True:
            self.dial_now[n].clear()
            log.info("link to %s: connecting", n)
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(spec.get("host", "127.0.0.1"), spec["peer_port"]), 2)
            except (OSError, asyncio.TimeoutError) as e:
                why = str(e) or type(e).__name__
            else:
                writer.write(b"HELLO " + self.name.encode() + b"\n")
                writer.write(b"".join(line + b"\n" for _, line in self.table.values()))
                self.links[n] = writer
                log.info("link to %s: up (%d records sent)", n, len(self.table))
                backoff = 0.05
                try:
                    while await reader.read(READ_SIZE):  # the acceptor only talks to refuse
                        pass
                    why = "closed by neighbour"
                except (ConnectionError, OSError) as e:
                    why = str(e)
                self.links[n] = None
                writer.close()
            delay = backoff * random.uniform(0.5, 1.0)
            log.info("link to %s: down (%s); retry in %d ms", n, why, delay * 1000)
            try:
                await asyncio.wait_for(self.dial_now[n].wait(), delay)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 0.5)

    async def run(self):
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        clients = await asyncio.start_server(self.client, self.host, self.port)
        peers = await asyncio.start_server(self.peer_in, self.host, self.peer_port)
        log.info("%s listening on %s:%d (clients) and %s:%d (neighbours); Places key %s",
                 self.name, self.host, self.port, self.host, self.peer_port,
                 "set" if self.key else "not set")
        diallers = [asyncio.ensure_future(self.dialler(n)) for n in self.neighbours]
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        clients.close()
        peers.close()
        for task in diallers:
            task.cancel()
        for w in list(self.links.values()) + list(self.inbound.values()):
            if w is not None:
                w.transport.abort()
        await self.http.close()
        log.info("%s shut down", self.name)


def legacy_place(p):
    out = {"name": (p.get("displayName") or {}).get("text"), "place_id": p.get("id")}
    if "location" in p:
        out["geometry"] = {"location": {"lat": p["location"].get("latitude"),
                                        "lng": p["location"].get("longitude")}}
    for new, old in (("formattedAddress", "vicinity"), ("types", "types"), ("rating", "rating"),
                     ("userRatingCount", "user_ratings_total"), ("businessStatus", "business_status")):
        if new in p:
            out[old] = p[new]
    return {k: v for k, v in out.items() if v is not None}


class UtcFormatter(logging.Formatter):
    def format(self, record):
        ns = time.time_ns()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
        return f"{stamp}.{ns % 1_000_000_000:09d}Z [{record.levelname}] {record.getMessage()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="herd.yml")
    ap.add_argument("name")
    args = ap.parse_args()
    try:
        with open(args.config) as f:
            cfg = yaml.safe_load(f)
        if args.name not in cfg["servers"]:
            raise KeyError(f"no server {args.name} in {args.config}")
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        print(f"herd_asyncio: {e}", file=sys.stderr)
        sys.exit(2)
    cfg_dir = os.path.dirname(os.path.abspath(args.config))
    log_dir = os.path.join(cfg_dir, (cfg.get("log") or {}).get("dir", "logs"))
    os.makedirs(log_dir, exist_ok=True)
    handler = logging.FileHandler(os.path.join(log_dir, f"{args.name}.log"))
    handler.setFormatter(UtcFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        asyncio.run(Herd(args.name, cfg, cfg_dir).run())
    except OSError as e:
        print(f"herd_asyncio: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
