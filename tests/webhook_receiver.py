"""A webhook receiver on 127.0.0.1 for tests: records every delivery it gets."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_SECONDS = 6


class Receiver(ThreadingHTTPServer):
    """Records every delivery; /flaky answers 500 to its first call, /slow answers after SLOW_SECONDS."""

    def __init__(self):
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    def calls_to(self, path: str) -> list[dict]:
        with self.lock:
            return [call for call in self.calls if call["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
            seen = len([c for c in self.server.calls if c["path"] == self.path])
        if self.path.startswith("/slow"):
            time.sleep(SLOW_SECONDS)
        status = 500 if self.path.startswith("/flaky") and seen == 1 else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass
