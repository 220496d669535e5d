"""A reverse proxy in front of the local S3 that adds a fixed latency to every S3 request and counts them.

On localhost an S3 request costs the same whatever the client and nothing waits on the network, which flatters a
sequential script; in a region each request takes milliseconds. ``bench/end_to_end.py`` runs the comparison once
as is and once with this proxy in the local stack's moto port (the real moto behind it on a private port), so the
same per-request latency applies to every method, to the worker and to the emulator's own reads alike.

Only S3 requests are delayed and counted. SQS and EventBridge share moto's port (they are told apart by their
``X-Amz-Target`` header or an ``Action=`` form body, as botocore sends them) and ``/moto-api/`` is moto's own admin
API: those pass through untouched. ``GET /_latency_proxy/stats`` answers the counts as JSON, ``POST
/_latency_proxy/reset`` zeroes them.

    python bench/lib/latency_proxy.py --port P --latency-ms 15     (starts moto on a free port behind it)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
# Hop-by-hop headers (RFC 9110 §7.6.1) are the proxy's own business, never forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


class ProxyState:
    """The delay and the counters, shared by every handler thread."""

    def __init__(self, upstream_port: int, latency_seconds: float) -> None:
        self.upstream_port = upstream_port
        self.latency_seconds = latency_seconds
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.local = threading.local()  # one keep-alive connection to moto per handler thread

    def connection(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(HOST, self.upstream_port, timeout=300)
            self.local.conn = conn
        return conn

    def drop_connection(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            s3 = {k.removeprefix("s3:"): v for k, v in self.counts.items() if k.startswith("s3:")}
            return {"latency_ms": self.latency_seconds * 1000, "s3_requests": sum(s3.values()), "s3_by_method": s3,
                    "other_requests": sum(v for k, v in self.counts.items() if not k.startswith("s3:"))}

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()


def is_s3(method: str, path: str, headers: Any, body: bytes) -> bool:
    if path.startswith("/moto-api") or headers.get("X-Amz-Target"):
        return False
    # SQS's query protocol: a form POST carrying Action=... (to / or to a queue URL).
    content_type = headers.get("Content-Type", "")
    return not (method == "POST" and "x-www-form-urlencoded" in content_type and b"Action=" in body[:4096])


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def make_handler(state: ProxyState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _admin(self) -> bool:
            if not self.path.startswith("/_latency_proxy/"):
                return False
            if self.path == "/_latency_proxy/reset" and self.command == "POST":
                state.reset()
            payload = json.dumps(state.stats()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return True

        def _forward(self) -> None:
            body = read_body(self)
            if self._admin():
                return
            if is_s3(self.command, self.path, self.headers, body):
                state.count(f"s3:{self.command}")
                if state.latency_seconds:
                    time.sleep(state.latency_seconds)
            else:
                state.count("other")
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            for attempt in (1, 2):
                conn = state.connection()
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (http.client.HTTPException, OSError):
                    state.drop_connection()  # moto closed an idle keep-alive connection: one fresh try
                    if attempt == 2:
                        raise
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    return Handler


class LatencyProxy:
    """The proxy on ``port`` in a thread, forwarding to ``upstream_port``."""

    def __init__(self, port: int, upstream_port: int, latency_ms: float) -> None:
        self.state = ProxyState(upstream_port, latency_ms / 1000)
        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer.request_queue_size = 128
        self.server = ThreadingHTTPServer((HOST, port), make_handler(self.state))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> LatencyProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the port clients use (the stack's moto port)")
    parser.add_argument("--latency-ms", type=float, default=15.0, help="added before every S3 request")
    args = parser.parse_args()
    upstream = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(upstream)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):  # moto is ready when it answers
        with contextlib.suppress(OSError), socket.create_connection((HOST, upstream), 0.2):
            break
        time.sleep(0.05)
    proxy = LatencyProxy(args.port, upstream, args.latency_ms).start()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        while not stopping.is_set() and moto.poll() is None:
            stopping.wait(0.5)
    finally:
        proxy.stop()
        moto.terminate()
        try:
            moto.wait(10)
        except subprocess.TimeoutExpired:
            moto.kill()
    os._exit(0)


if __name__ == "__main__":
    main()
