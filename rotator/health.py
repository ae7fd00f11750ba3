"""The daemon's HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics`` (GET only).

A stdlib ``ThreadingHTTPServer`` on the configured address; nothing else is served. The pages
carry names, ids, states and timestamps, never a key value (and pass the redactor anyway).
Only the daemon imports this module.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from rotator.redact import redact

log = logging.getLogger("rotator.health")

#: () -> (ready, details)
ReadyCheck = Callable[[], "tuple[bool, dict[str, Any]]"]
#: () -> (body, content type)
MetricsPage = Callable[[], "tuple[bytes, str]"]


def parse_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:9464' / ':9464' / '[::1]:9464' -> (host, port); an empty host binds all."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]")
    return host, int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], ready: ReadyCheck, metrics: MetricsPage) -> None:
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if not host:
            address = ("0.0.0.0", address[1])
        self.ready, self.metrics = ready, metrics
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "rotator"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                self._reply(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                ready, details = self.server.ready()
                body = redact(json.dumps({"ready": ready, **details}, default=str, indent=1)) + "\n"
                self._reply(200 if ready else 503, body.encode(), "application/json")
            elif path == "/metrics":
                body, content_type = self.server.metrics()
                self._reply(200, redact(body.decode("utf-8")).encode("utf-8"), content_type)
            else:
                self._reply(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain; charset=utf-8")
        except Exception:  # noqa: BLE001 - a failing page must not kill the server
            log.exception("error serving %s", path)
            self._reply(500, b"internal error\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class HealthServer:
    """Serves the three pages in a background thread until :meth:`stop`."""

    def __init__(self, address: str, *, ready: ReadyCheck, metrics: MetricsPage) -> None:
        self._server = _Server(parse_address(address), ready, metrics)
        # Idle, the loop sleeps in select(); stop() wakes it with a connection instead of polling.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 60},
                                        name="rotator-http", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread.is_alive():
            waiter = threading.Thread(target=self._server.shutdown, daemon=True)
            waiter.start()
            host, port = self._server.server_address[:2]
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            for _ in range(int(timeout / 0.05)):
                try:
                    with socket.create_connection((host, port), timeout=0.2):
                        pass
                except OSError:
                    pass
                waiter.join(0.05)
                if not waiter.is_alive():
                    break
        self._server.server_close()
