"""A test origin (the app behind the tunnel) that tells the test when a request has arrived."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Origin:
    def __init__(self) -> None:
        self.in_flight = 0
        self.served = 0
        self.slow_started = threading.Event()
        self._lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                with origin._lock:
                    origin.in_flight += 1
                try:
                    if url.path == "/slow":
                        seconds = float(parse_qs(url.query).get("seconds", ["1"])[0])
                        origin.slow_started.set()
                        time.sleep(seconds)  # the slowness under test
                    body = b"hello from the origin\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with origin._lock:
                        origin.in_flight -= 1
                        origin.served += 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Origin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
