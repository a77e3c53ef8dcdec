#!/usr/bin/env python3
"""A Places API imitation for benchmarks: answers both Google endpoints after a fixed
delay (default 50 ms), on 127.0.0.1 only.

    bench/places_imitation.py --port 8790 --delay-ms 50

Legacy Nearby Search (GET /maps/api/place/nearbysearch/json) gets 20 results; Places API
(New) searchNearby (POST /v1/places:searchNearby) gets maxResultCount places. Keep-alive,
one thread per connection. The tests use their own Rust imitation
(tests/support/places_stub.rs); this one only has to be realistic in size and timing.
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def place(i):
    lat, lng = 34.0689 + i * 0.001, -118.4452 - i * 0.001
    return {
        "id": f"ChIJbench{i:04d}",
        "displayName": {"text": f"Bench Place {i}", "languageCode": "en"},
        "formattedAddress": f"{100 + i} Westwood Plaza, Los Angeles",
        "location": {"latitude": lat, "longitude": lng},
        "types": ["cafe", "food", "point_of_interest", "establishment"],
        "rating": 4.1,
        "userRatingCount": 120 + i,
        "businessStatus": "OPERATIONAL",
    }


def legacy(i):
    p = place(i)
    return {
        "business_status": "OPERATIONAL",
        "geometry": {"location": {"lat": p["location"]["latitude"], "lng": p["location"]["longitude"]}},
        "name": p["displayName"]["text"],
        "place_id": p["id"],
        "rating": 4.1,
        "types": p["types"],
        "user_ratings_total": p["userRatingCount"],
        "vicinity": p["formattedAddress"],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.05

    def log_message(self, *args):
        pass

    def answer(self, doc):
        time.sleep(self.delay)
        body = json.dumps(doc, indent=2).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.answer({"html_attributions": [], "results": [legacy(i) for i in range(20)], "status": "OK"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        try:
            n = int(json.loads(self.rfile.read(length)).get("maxResultCount", 20))
        except (ValueError, AttributeError):
            n = 20
        self.answer({"places": [place(i) for i in range(max(0, min(n, 20)))]})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    args = ap.parse_args()
    Handler.delay = args.delay_ms / 1000.0
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
