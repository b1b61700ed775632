"""A stand-in for Prometheus' HTTP API on loopback, for benchmarks and tests.

    python bench/standin.py --port 9999 --series 50000            # a huge matrix answer
    python bench/standin.py --port 9999 --series 3 --jump-at 1767614000

``/api/v1/query_range`` answers a matrix of ``--series`` series on exactly the grid
asked for (``start``, ``end``, ``step``), written out while it is generated, so the
server stays small whatever the answer's size. The series are ``bench_value`` with
labels ``namespace`` and ``app`` (in label order, as Prometheus sorts them); their
values come from 64 patterns (a level, deterministic noise), each doubled from
``--jump-at`` on (a level shift the detector flags). ``/api/v1/query`` answers an
empty vector.

The answers can be turned into garbage at run time, as a broken proxy would send
them, all with HTTP 200: ``POST /-/mode?m=truncated`` (JSON cut in the middle),
``m=html`` (an HTML page), ``m=hang`` (the request is read, no answer ever comes),
``m=matrix`` (back to normal). With ``--upstream`` it is a proxy in front of a real
Prometheus instead, passing its answers through in ``matrix`` mode. ``GET /-/stats`` says how
many range queries were answered. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

MODES = ("matrix", "truncated", "html", "hang")
PATTERNS = 64
HTML = b"<!DOCTYPE html><html><head><title>Login</title></head><body>Sign in</body></html>\n"


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # RFC 3339, as Prometheus also accepts
        from datetime import datetime

        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _step(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


class StandIn:
    """The server's state: what it answers, and what it was asked."""

    def __init__(self, series: int, jump_at: float | None, upstream: str | None = None) -> None:
        self.series = series
        self.jump_at = jump_at
        self.upstream = upstream.rstrip("/") if upstream else None
        self.released = threading.Event()  # ends the stalls of ``hang`` (at shutdown)
        self.mode = "matrix"
        self.range_queries = 0
        self.lock = threading.Lock()

    def rows(self, start: float, end: float, step: float) -> list[bytes]:
        """The ``values`` arrays of the patterns on the grid, as JSON bytes."""
        n = round((end - start) / step) + 1
        times = [start + k * step for k in range(n)]
        out = []
        for k in range(min(PATTERNS, max(self.series, 1))):
            level = 10.0 + k
            points = []
            for t in times:
                minute = math.floor(t / 60.0)
                u = math.modf(math.sin((k + 1) * 12.9898 + minute * 0.078233) * 43758.5453)[0]
                v = level * (1.0 + 0.01 * u)
                if self.jump_at is not None and t >= self.jump_at:
                    v *= 2.0
                ts = int(t) if float(t).is_integer() else t
                points.append(f'[{ts},"{v:.6g}"]')
            out.append(("[" + ",".join(points) + "]").encode())
        return out


class Handler(BaseHTTPRequestHandler):
    server_version = "standin-prometheus"
    state: StandIn

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        if url.path == "/-/mode":
            mode = parse_qs(url.query).get("m", [""])[0]
            if mode not in MODES:
                self._send(400, b'{"error":"unknown mode"}')
                return
            self.state.mode = mode
            self._send(200, json.dumps({"mode": mode}).encode())
            return
        self.do_GET()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query).items()}
        state = self.state
        if url.path == "/-/stats":
            body = {"mode": state.mode, "range_queries": state.range_queries}
            self._send(200, json.dumps(body).encode())
            return
        if url.path in ("/-/ready", "/-/healthy"):
            self._send(200, b"ok\n", "text/plain")
            return
        if url.path not in ("/api/v1/query", "/api/v1/query_range"):
            self._send(404, b'{"status":"error","error":"not found"}')
            return
        if state.mode == "html":
            self._send(200, HTML, "text/html")
            return
        if state.mode == "truncated":
            self._send(200, b'{"status":"success","data":{"resultType":"matrix","result":[{"me')
            return
        if state.mode == "hang":  # the request is read, the answer never comes
            state.released.wait(120)
            return
        if state.upstream is not None:  # a proxy in front of a real Prometheus
            self._forward(state.upstream + self.path)
            return
        if url.path == "/api/v1/query":
            self._send(200, b'{"status":"success","data":{"resultType":"vector","result":[]}}')
            return
        with state.lock:
            state.range_queries += 1
        try:
            start, end = _float(params["start"]), _float(params["end"])
            step = _step(params["step"])
        except (KeyError, ValueError):
            self._send(400, b'{"status":"error","errorType":"bad_data","error":"bad range"}')
            return
        rows = state.rows(start, end, step)
        # no Content-Length: the body ends when the connection closes (HTTP/1.0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        write = self.wfile.write
        write(b'{"status":"success","data":{"resultType":"matrix","result":[')
        buf: list[bytes] = []
        for i in range(state.series):
            metric = (
                f'{{"metric":{{"__name__":"bench_value","app":"app{i:05d}",'
                f'"namespace":"ns{i % 20:02d}"}},"values":'
            ).encode()
            buf.append((b"," if i else b"") + metric + rows[i % len(rows)] + b"}")
            if len(buf) >= 64:
                write(b"".join(buf))
                buf.clear()
        write(b"".join(buf) + b"]}}")

    def _forward(self, url: str) -> None:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                status, ctype, body = r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as exc:
            status, ctype, body = exc.code, exc.headers.get("Content-Type", ""), exc.read()
        self._send(status, body, ctype or "application/json")


def serve(
    port: int, series: int, jump_at: float | None = None, upstream: str | None = None
) -> ThreadingHTTPServer:
    """A server (not yet serving: call ``serve_forever``) on 127.0.0.1:``port``; with
    ``upstream`` (a Prometheus URL) it forwards the queries there while in ``matrix``
    mode."""
    state = StandIn(series, jump_at, upstream)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    server.state = state  # type: ignore[attr-defined]
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--jump-at", type=float, default=None)
    ap.add_argument("--upstream", default=None, help="a Prometheus to forward queries to")
    args = ap.parse_args()
    server = serve(args.port, args.series, args.jump_at, args.upstream)
    print(f"stand-in Prometheus on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
