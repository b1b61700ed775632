"""Tiny HTTP server for the demo workload (standard library only, plus prometheus_client).

Routes::

    GET    /metrics                      Prometheus exposition (text or OpenMetrics by Accept)
    GET    /faults                       JSON list of ongoing and scheduled faults
    POST   /fault?app=..&kind=..[&duration=s][&magnitude=x][&start=epoch|&offset=s]
    DELETE /fault[?app=..]               end faults (of one app or all)
    POST   /deploy?app=..[&description=..]  announce a (fake) deploy of the app to the
                                         webhook's POST /changes, signed (``aiops demo up``)
    GET    /healthz                      {"status": "ok"}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from demo.workload import Workload

log = logging.getLogger(__name__)


class DemoServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to a :class:`Workload` and a private registry."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        workload: Workload,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(address, _Handler)
        self.workload = workload
        self.clock = clock
        self.registry = workload.register(registry, clock=clock)
        self.thread: threading.Thread | None = None
        #: where ``POST /deploy`` announces a change: (the webhook's /changes URL, secret)
        self.announce_to: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the serving thread."""
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join(timeout)


def serve(
    workload: Workload,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    announce_to: tuple[str, str] | None = None,
) -> tuple[DemoServer, threading.Thread]:
    """Serve ``workload`` in a daemon thread; ``port=0`` picks a free port.
    ``announce_to``: the webhook's ``/changes`` URL and secret ``POST /deploy`` uses."""
    server = DemoServer((host, port), workload, registry, clock)
    server.announce_to = announce_to
    thread = threading.Thread(target=server.serve_forever, name="demo-workload-http", daemon=True)
    server.thread = thread
    thread.start()
    return server, thread


def _number(params: dict[str, str], name: str) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _params(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if body:
            kind = self.headers.get("Content-Type", "")
            if "json" in kind:
                data = json.loads(body)
                if not isinstance(data, dict):
                    raise ValueError("JSON body must be an object")
                params.update({k: str(v) for k, v in data.items() if v is not None})
            else:
                params.update(parse_qsl(body.decode(), keep_blank_values=True))
        return parts.path.rstrip("/") or "/", params

    def _dispatch(self) -> None:
        try:
            path, params = self._params()
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad request body: {exc}"})
            return
        route = (self.command, path)
        wl = self.server.workload
        try:
            if route == ("GET", "/metrics"):
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, encoder(self.server.registry), content_type)
            elif route == ("GET", "/faults"):
                wl.advance_to(self.server.clock())
                self._json(HTTPStatus.OK, wl.faults())
            elif route == ("POST", "/fault"):
                self._post_fault(params)
            elif route == ("DELETE", "/fault"):
                wl.advance_to(self.server.clock())
                cleared = wl.clear(params.get("app") or None)
                self._json(HTTPStatus.OK, {"cleared": cleared})
            elif route == ("POST", "/deploy"):
                self._deploy(params)
            elif route in (("GET", "/healthz"), ("GET", "/")):
                self._json(HTTPStatus.OK, {"status": "ok", "time": wl.state_time})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {self.command} {path}"})
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})

    def _post_fault(self, params: dict[str, str]) -> None:
        wl = self.server.workload
        for required in ("app", "kind"):
            if not params.get(required):
                raise ValueError(f"missing query parameter {required!r}")
        duration = _number(params, "duration")
        start, offset = _number(params, "start"), _number(params, "offset")
        if start is not None and offset is not None:
            raise ValueError("give either start (epoch seconds) or offset (seconds), not both")
        now = self.server.clock()
        wl.advance_to(now)
        if offset is not None:
            start = now + offset
        fault = wl.inject(
            params["app"],
            params["kind"],
            start=start,
            duration=600.0 if duration is None else duration,
            magnitude=_number(params, "magnitude"),
        )
        self._json(HTTPStatus.OK, fault.to_dict(wl.state_time))

    do_GET = do_POST = do_DELETE = _dispatch

    def _deploy(self, params: dict[str, str]) -> None:
        """A fake deploy of ``app``, announced to the webhook like CI/CD would."""
        import uuid

        import httpx

        from aiops.core.signing import signed_headers
        from demo.workload import APPS

        app = params.get("app")
        if app not in APPS:
            raise ValueError(f"app must be one of {', '.join(APPS)}, got {app!r}")
        if self.server.announce_to is None:
            self._json(HTTPStatus.CONFLICT, {"error": "no webhook to announce to (aiops demo up)"})
            return
        url, secret = self.server.announce_to
        change = {
            "id": f"demo-deploy-{uuid.uuid4().hex[:12]}",
            "labels": {"namespace": self.server.workload.namespace, "app": app},
            "kind": "deploy",
            "description": params.get("description") or "a demo deploy",
            "at": self.server.clock(),
        }
        body = json.dumps(change).encode()
        headers = {"Content-Type": "application/json", **signed_headers(secret, body)}
        try:
            r = httpx.post(url, content=body, headers=headers, timeout=5.0)
        except httpx.HTTPError as exc:
            self._json(HTTPStatus.BAD_GATEWAY, {"error": f"the webhook did not answer: {exc}"})
            return
        if not r.is_success:
            self._json(HTTPStatus.BAD_GATEWAY, {"error": f"the webhook answered {r.status_code}"})
            return
        self._json(HTTPStatus.OK, {"change": change, "webhook": r.json()})
