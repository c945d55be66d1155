"""A tiny counting reverse proxy, to count the requests a contender makes.

Forwards every request to ``--upstream`` (keep-alive on both sides) and counts
them per ``METHOD path``. ``GET /__count__`` answers the counts so far and
resets them; ``GET /__times__`` answers each request's upstream milliseconds
(in order) and resets them. Used only in an untimed pass: the proxy adds latency, so the timed
runs go straight to the server. Prints ``port <n>`` when ready.

    python bench/contenders/count_proxy.py --upstream http://127.0.0.1:4200
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
}
counts: Counter[str] = Counter()
times: list[tuple[str, float, int]] = []
lock = threading.Lock()
local = threading.local()


def make_handler(host: str, port: int) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _upstream(self) -> http.client.HTTPConnection:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(host, port, timeout=300)
            return conn

        def _forward(self) -> None:
            if self.path in ("/__count__", "/__times__"):
                with lock:
                    body = json.dumps(dict(counts) if self.path == "/__count__" else times).encode()
                    (counts if self.path == "/__count__" else times).clear()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP and k.lower() != "host"
            }
            with lock:
                counts[f"{self.command} {self.path.split('?')[0]}"] += 1
            began = time.monotonic()
            for attempt in range(2):
                conn = self._upstream()
                try:
                    conn.request(self.command, self.path, body=data, headers=headers)
                    resp = conn.getresponse()
                    payload = resp.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            with lock:
                key = f"{self.command} {self.path.split('?')[0]}"
                times.append((key, round((time.monotonic() - began) * 1000, 1), len(payload)))
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    return Proxy


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--upstream", required=True, help="scheme://host:port of the server")
    a = p.parse_args()
    up = urlsplit(a.upstream)
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), make_handler(up.hostname or "127.0.0.1", up.port or 80)
    )
    server.daemon_threads = True
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
