"""``/metrics`` and ``/health`` on ``metrics.address``, served by the supervisor in a thread."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from savegress_gw.metrics import GatewayCollector, MetricsBlock
from savegress_gw.profile.model import ProfileBase


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` → (host, port); ``:8081`` binds every interface."""
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port)


class StatusServer:
    """Serves Prometheus metrics, liveness (``/health``, ``/health/live``) and readiness (``/health/ready``)."""

    def __init__(self, profile: ProfileBase, metrics: MetricsBlock, children: list[Any]) -> None:
        settings = profile.metrics
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(metrics, settings.prometheus.namespace, settings.labels))
        self.metrics_path = settings.prometheus.path or settings.path
        self.children = children
        host, port = parse_address(settings.address)
        if settings.prometheus.port:
            port = settings.prometheus.port
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == server.metrics_path:
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/health", "/health/live"):
                    self._json(200, {"status": "ok"})
                elif path == "/health/ready":
                    children = {c.name: bool(c.ready) for c in server.children}
                    ready = all(children.values())
                    self._json(200 if ready else 503, {"status": "ok" if ready else "starting",
                                                       "children": children})
                else:
                    self._json(404, {"error": f"no such path {path}"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                self._send(status, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logs
                return

        return Handler
