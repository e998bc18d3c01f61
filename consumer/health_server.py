"""The consumer's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (liveness), `/readyz` (readiness).

Liveness says the consume loop still turns; readiness says it can do its job right now
(ClickHouse answered and no write is stuck in retries), so Kubernetes stops routing work to a
consumer that cannot write without killing one that is only waiting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


def parse_listen(address: str) -> tuple[str, int]:
    """`:9108`, `0.0.0.0:9108` or `127.0.0.1:0` (any free port) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {address!r}: expected HOST:PORT or :PORT")
    return host or "0.0.0.0", int(port)  # noqa: S104 - a metrics endpoint listens where it is told


class HealthServer:
    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        *,
        alive: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        host, port = parse_listen(address)
        handler = _handler(registry, alive, ready)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="runstream-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, alive: Callable[[], bool], ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"consume loop stalled\n")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server API
            log.debug("http: " + format, *args)  # noqa: G003

    return Handler
