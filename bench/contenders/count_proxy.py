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


def request_parts(handler: BaseHTTPRequestHandler) -> tuple[bytes | None, dict[str, str]]:
    """The request's body and the headers to pass on (no hop-by-hop headers, no Host)."""
    length = int(handler.headers.get("Content-Length") or 0)
    data = handler.rfile.read(length) if length else None
    headers = {
        k: v for k, v in handler.headers.items() if k.lower() not in HOP and k.lower() != "host"
    }
    return data, headers


def forward(
    handler: BaseHTTPRequestHandler,
    host: str,
    port: int,
    data: bytes | None,
    headers: dict[str, str],
    kept: threading.local,
) -> tuple[http.client.HTTPResponse, bytes]:
    """Send the handler's request upstream on this thread's kept-alive connection (``kept.conn``),
    once more on a new one if that was dropped: the response and its body."""
    for attempt in range(2):
        conn = getattr(kept, "conn", None) or http.client.HTTPConnection(host, port, timeout=300)
        kept.conn = conn
        try:
            conn.request(handler.command, handler.path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp, resp.read()
        except (http.client.HTTPException, OSError):
            conn.close()
            kept.conn = None
            if attempt:
                raise
    raise AssertionError("unreachable")


def reply(
    handler: BaseHTTPRequestHandler,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
    reason: str | None = None,
) -> None:
    """Answer the handler's request: status, the end-to-end headers, the body."""
    handler.send_response(status, reason)
    for k, v in headers:
        if k.lower() not in HOP:
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def make_handler(host: str, port: int) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            if self.path in ("/__count__", "/__times__"):
                with lock:
                    body = json.dumps(dict(counts) if self.path == "/__count__" else times).encode()
                    (counts if self.path == "/__count__" else times).clear()
                reply(self, 200, [("Content-Type", "application/json")], body)
                return
            data, headers = request_parts(self)
            key = f"{self.command} {self.path.split('?')[0]}"
            with lock:
                counts[key] += 1
            began = time.monotonic()
            resp, payload = forward(self, host, port, data, headers, local)
            with lock:
                times.append((key, round((time.monotonic() - began) * 1000, 1), len(payload)))
            reply(self, resp.status, resp.getheaders(), payload, resp.reason)

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
