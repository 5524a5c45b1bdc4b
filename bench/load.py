"""Load generator: N client threads, each with one keep-alive HTTP connection, sharing a list of texts.

http.client rather than requests: on a 2-core box the load generator shares the CPUs with the
service, so its own per-request cost must stay small.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

WAIT_SECONDS = 30  # the API's long-poll (POST wait= / GET ?wait=): no client-side polling loop


class Connection:
    """One keep-alive connection; reconnects once if the server closed it (gunicorn keepalive)."""

    def __init__(self, base_url: str):
        parsed = urlparse(base_url)
        self.host, self.port = parsed.hostname, parsed.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=WAIT_SECONDS + 30)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                response = self.conn.getresponse()
                return response.status, json.loads(response.read() or b"{}")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def moderate_via_queue(conn: Connection, text: str | list[str]) -> bool:
    """The queue-backed API: POST with wait=, then GET ?wait= if the job was not finished in time.
    A list is one job of several texts (inputs)."""
    form = {"inputs": text} if isinstance(text, list) else {"input_text": text}
    status, body = conn.request("POST", "/generate", {**form, "wait": WAIT_SECONDS})
    while status == 202 or (status == 200 and body.get("status") in ("queued", "running")):
        status, body = conn.request("GET", f"/jobs/{body['job_id']}?wait={WAIT_SECONDS}")
    expected = len(text) if isinstance(text, list) else 1
    return status == 200 and body.get("status") == "succeeded" and len(body.get("results") or []) == expected


def moderate_sync(conn: Connection, text: str) -> bool:
    status, body = conn.request("POST", "/moderate", {"input_text": text})
    return status == 200 and "category_scores" in body


def enqueue_only(conn: Connection, text: str) -> bool:
    status, _ = conn.request("POST", "/generate", {"input_text": text})
    return status == 202


@dataclass
class LoadResult:
    requests: int
    failures: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return (self.requests - self.failures) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of request latency, in seconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else 0.0


def run_load(base_url: str, texts: list[str], clients: int, call) -> LoadResult:
    """Each text once, `clients` requests in flight at a time; `call(conn, text) -> ok`."""
    lock = threading.Lock()
    next_index = iter(range(len(texts)))
    latencies: list[float] = []
    failures = [0]

    def client() -> None:
        conn = Connection(base_url)
        mine, failed = [], 0
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            started = time.perf_counter()
            try:
                ok = call(conn, texts[index])
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                conn = Connection(base_url)
            mine.append(time.perf_counter() - started)
            failed += not ok
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    threads = [threading.Thread(target=client, daemon=True) for _ in range(min(clients, len(texts)))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(len(texts), failures[0], time.perf_counter() - started, latencies)
