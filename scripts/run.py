"""`make run`: Redis (if none answers at a local REDIS_URL), WORKERS worker processes and the API,
supervised until Ctrl-C/SIGTERM.

A child that dies is restarted with a log line, after a back-off that never blocks the loop: every
other child is still watched (and restarted) while one waits. Ctrl-C or SIGTERM stops them all
gracefully (SIGTERM, then SIGKILL after a grace period). Command lines come from scripts/launch.py.
Small on purpose: a process manager (supervisord, honcho) would need a config file of its own and
none starts Redis only when it is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from scripts import launch, redis_server
from shared.config import ConfigError, Settings, load_settings

GRACE_SECONDS = 40
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict | None = None
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    restart_at: float | None = None  # set while backing off

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.env)
        self.started_at = time.monotonic()
        self.restart_at = None


def log(message: str) -> None:
    print(f"[run] {message}", flush=True)


def private_redis(env: dict) -> Child | None:
    """A private Redis only for a local REDIS_URL that does not answer (never for a remote or
    password-protected server: that one is someone else's to start; never a Redis Cluster: start a local one
    with `python -m scripts.redis_cluster start`)."""
    if env.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    url = urlparse(env.get("REDIS_URL") or Settings.redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if host not in LOCAL_HOSTS or url.password or redis_server.answers(host, port):
        return None
    log(f"no Redis at {host}:{port}: starting a private one (data in {redis_server.DATA_DIR})")
    return Child("redis", redis_server.server_command(port, redis_server.DATA_DIR))


def metrics_port_for(env: dict, index: int, workers: int) -> str | None:
    """WORKER_METRICS_PORT for worker `index` (from 0) when this supervisor runs several: past the first,
    the ports after a single one; a range (9101-9103) as it is, each worker taking the first free port of
    it; 0 (off) stays off. None: leave the variable as it is."""
    raw = (env.get("WORKER_METRICS_PORT") or "").strip()
    if workers < 2 or "-" in raw:
        return None
    first = int(raw or Settings.worker_metrics_port)
    return str(first + index) if first else None


def children_for(env: dict) -> list[Child]:
    workers = int(env.get("WORKERS") or 1)
    children = [child for child in [private_redis(env)] if child]
    for index in range(workers):
        # Each worker process takes its share of the CPUs and, past the first, the next metrics port.
        worker_env = {**env, "WORKER_PROCESSES": str(env.get("WORKER_PROCESSES") or workers)}
        if (port := metrics_port_for(env, index, workers)) is not None:
            worker_env["WORKER_METRICS_PORT"] = port
        children.append(Child("worker" if workers == 1 else f"worker-{index + 1}", launch.worker_command(),
                              worker_env))
    children.append(Child("api", launch.api_command()))
    return children


def backoff_seconds(child: Child) -> float:
    return 1.0 if time.monotonic() - child.started_at > 10 else min(30.0, 2.0 ** child.restarts)


def supervise_once(children: list[Child]) -> None:
    """Restart the children whose back-off is over; schedule one for each child that just died."""
    now = time.monotonic()
    for child in children:
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.start()
            continue
        code = child.process.poll() if child.process else None
        if code is not None:
            child.restarts += 1
            backoff = backoff_seconds(child)
            child.restart_at = now + backoff
            log(f"{child.name} exited with code {code}; restarting it in {backoff:.0f}s (restart #{child.restarts})")


def stop_all(children: list[Child]) -> None:
    """The API first, then the workers together (each finishes its batch), Redis last."""
    for role in ("api", "worker", "redis"):
        group = [c for c in children if c.name.startswith(role) and c.process and c.process.poll() is None]
        for child in group:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in group:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
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
    env = dict(os.environ)
    try:  # a setting the API and workers would refuse (e.g. REDIS_CLUSTER with the broker in the cluster): say so once
        load_settings(env)
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        return 2
    children = children_for(env)
    for child in children:
        child.start()
        if child.name == "redis":
            launch.wait_until(lambda: redis_server.answers("127.0.0.1", urlparse(
                env.get("REDIS_URL") or Settings.redis_url).port or 6379), timeout=10, what="the private Redis")
    workers = sum(child.name.startswith("worker") for child in children)
    log(f"API on http://127.0.0.1:{env.get('PORT') or '5000'} (try /readyz, /models, /openapi.json, /metrics); "
        f"{workers} worker process(es), metrics from http://127.0.0.1:"
        f"{env.get('WORKER_METRICS_PORT') or Settings.worker_metrics_port}/metrics; Ctrl-C stops everything")
    while not stopping:
        supervise_once(children)
        time.sleep(0.2)
    log("stopping")
    stop_all(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
