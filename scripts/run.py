"""`make run`: Redis (if none answers), the worker and the API, supervised until Ctrl-C/SIGTERM.

A child that dies is restarted with a log line (with a short back-off); Ctrl-C or SIGTERM stops
them all gracefully (SIGTERM, then SIGKILL after a grace period). Small on purpose: a process
manager (supervisord, honcho) would need a config file of its own and none starts Redis only
when it is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from scripts import redis_server

PYTHON = sys.executable
GRACE_SECONDS = 40


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv)
        self.started_at = time.monotonic()


def log(message: str) -> None:
    print(f"[run] {message}", flush=True)


def children_for(env: dict) -> list[Child]:
    url = urlparse(env.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    children = []
    if not redis_server.answers(host, port):
        log(f"no Redis at {host}:{port}: starting a private one (data in {redis_server.DATA_DIR})")
        children.append(Child("redis", redis_server.server_command(port, redis_server.DATA_DIR)))
    children.append(Child("worker", [PYTHON, "-m", "worker"]))
    children.append(Child("api", [PYTHON, "-m", "gunicorn", "--config", "api/gunicorn_conf.py",
                                  "api:create_app()"]))
    return children


def stop_all(children: list[Child]) -> None:
    for child in reversed(children):  # API first, Redis last
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                log(f"{child.name} did not stop in {GRACE_SECONDS}s; killing it")
                child.process.kill()


def main() -> int:
    stopping = False

    def request_stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    children = children_for(dict(os.environ))
    for child in children:
        child.start()
        if child.name == "redis":
            time.sleep(0.5)
    port = os.environ.get("PORT", "5000")
    log(f"API on http://127.0.0.1:{port} (try /readyz, /models, /openapi.json, /metrics); "
        f"worker metrics on http://127.0.0.1:{os.environ.get('WORKER_METRICS_PORT', '9101')}/metrics; "
        "Ctrl-C stops everything")
    while not stopping:
        for child in children:
            code = child.process.poll() if child.process else None
            if code is not None and not stopping:
                child.restarts += 1
                backoff = 1.0 if time.monotonic() - child.started_at > 10 else min(30.0, 2.0 ** child.restarts)
                log(f"{child.name} exited with code {code}; restarting it in {backoff:.0f}s "
                    f"(restart #{child.restarts})")
                time.sleep(backoff)
                child.start()
        time.sleep(0.2)
    log("stopping")
    stop_all(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
