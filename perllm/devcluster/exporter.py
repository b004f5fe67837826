"""`TextExporter`: a Prometheus scrape target on loopback whose text a test controls.

Tests of the extender and the operator put static series (bandwidth, latency histograms)
in front of the harness' real Prometheus with it; subclasses say what `render()` serves.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class TextExporter(ABC):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @abstractmethod
    def render(self) -> str:
        """The exposition text (version 0.0.4) served on every scrape."""

    def scrape_config(self, job: str) -> dict[str, Any]:
        """A Prometheus scrape job for this exporter (`Cluster.set_scrape_configs`)."""
        return {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
