"""Operations endpoints of a long-running service: ``/metrics``, ``/healthz`` and ``/readyz``.

Each service (ingest, scorer, trainer) starts one :class:`OpsServer` on
``STREAMREC_METRICS_HOST:STREAMREC_METRICS_PORT`` (a daemon thread; nothing to stop), declares its
Prometheus metrics with ``prometheus_client`` next to the code that updates them, and tells the
server whether it is alive and ready:

- ``GET /healthz``: 200 while the service's main loop is running (liveness: restart me if not).
- ``GET /readyz``: 200 once the service is connected and doing its job (readiness), else 503
  with the reason.
- ``GET /metrics``: the Prometheus text format of the process's default registry.

The api serves the same three paths from its own FastAPI app.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from streamrec.shared.logs import get_logger
from streamrec.shared.settings import Settings

log = get_logger(__name__)

# A check returns None when fine, or a short reason when not.
Check = Callable[[], str | None]


class OpsServer:
    """The three endpoints over a small threaded HTTP server."""

    def __init__(self, host: str, port: int, alive: Check, ready: Check) -> None:
        self.alive, self.ready = alive, ready
        handler = _handler_for(self)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when 0 asked for any free one)."""
        return self._server.server_address[1]

    def start(self) -> OpsServer:
        """Serve in a background thread."""
        self._thread.start()
        log.info("ops endpoints up", extra={"port": self.port, "paths": ["/metrics", "/healthz", "/readyz"]})
        return self

    def stop(self) -> None:
        """Stop serving (tests; services just exit)."""
        self._server.shutdown()
        self._server.server_close()


def start_ops_server(settings: Settings, alive: Check, ready: Check) -> OpsServer | None:
    """Start the endpoints as configured; None when ``STREAMREC_METRICS_PORT`` is 0 (off)."""
    if settings.metrics_port == 0:
        return None
    return OpsServer(settings.metrics_host, settings.metrics_port, alive, ready).start()


def _handler_for(server: OpsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                check = server.alive if path == "/healthz" else server.ready
                try:
                    problem = check()
                except Exception as exc:  # a failing check means "not ok", never a 500 page
                    problem = f"check failed: {exc}"
                self._reply(503 if problem else 200, (problem or "ok").encode() + b"\n")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would flood the service's log

    return Handler
