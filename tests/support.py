"""Real processes for integration tests: a private Redis, `python -m worker`, gunicorn.

Every test stack gets its own Redis (or DB) and free ports, so tests never touch the machine's
Redis on 6379 and can stop/start theirs to simulate outages.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import redis
import requests

from scripts import redis_server
from shared.worker_registry import live_workers

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port; stop() and start() again keep the same port."""

    def __init__(self, data_dir: Path):
        self.port = free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = redis_server.start(self.port, self.data_dir)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


def base_env(redis_url: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODEL", "WORKER_", "RATE_", "READ_RATE_", "API_KEYS", "BATCH_", "CACHE_",
                                 "PROMETHEUS_", "WEBHOOK_"))}
    env.update({"REDIS_URL": redis_url, "RATE_LIMITER": "off", "READ_RATE_LIMITER": "off", "LOG_LEVEL": "INFO",
                "WORKER_METRICS_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Proc:
    """A child process with its output in a log file, shown when a test needs it."""

    def __init__(self, argv: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log_file = open(log_path, "ab")
        self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.env = env

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        """Signal the whole process tree (as `kill -- -PGID` would)."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 40) -> int | None:
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.process.wait(10)
        self.log_file.close()
        return self.process.returncode


def start_worker(env: dict, log_path: Path, models: list[str] | None = None, timeout: float = 120) -> Proc:
    """`python -m worker`; returns once its heartbeat says it consumes its queues."""
    proc = Proc([sys.executable, "-m", "worker"], env, log_path)
    client = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    names = models or [m.split("=")[0] for m in env.get("WORKER_MODELS", "").split(",") if m] or \
        [m.split("=")[0] for m in env.get("MODELS", "default=").split(",")]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"worker exited with {proc.process.returncode}:\n{proc.log_tail()}")
        try:
            if all(count >= 1 for count in live_workers(client, names).values()) and \
                    f"moderation-{proc.process.pid}@" in proc.log_tail(100_000):
                return proc
        except redis.RedisError:
            pass
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"worker not ready in {timeout}s:\n{proc.log_tail()}")


class ApiServer(Proc):
    """gunicorn with the API's settings; `app` is the WSGI app (the benchmark also serves bench.sync_app)."""

    def __init__(self, env: dict, log_path: Path, workers: int = 2, app: str = "api:create_app()"):
        self.port = free_port()
        env = {**env, "PORT": str(self.port), "HOST": "127.0.0.1", "GUNICORN_WORKERS": str(workers)}
        super().__init__([sys.executable, "-m", "gunicorn", "--config", "api/gunicorn_conf.py", app],
                         env, log_path)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> ApiServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"API exited:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"API not up in {timeout}s:\n{self.log_tail()}")


def start_api(env: dict, log_path: Path, workers: int = 2, app: str = "api:create_app()",
              timeout: float = 30) -> ApiServer:
    return ApiServer(env, log_path, workers, app).wait_ready(timeout)


def wait_for_job(api_url: str, job_id: str, timeout: float = 60, headers: dict | None = None) -> dict:
    """Follow a job with the API's own long-poll (?wait=) until it finishes; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        wait = max(0.0, min(10.0, deadline - time.monotonic()))
        body = requests.get(f"{api_url}/jobs/{job_id}", params={"wait": f"{wait:.2f}"}, headers=headers,
                            timeout=wait + 15).json()
        if body.get("status") in ("succeeded", "failed"):
            return body
        if time.monotonic() >= deadline:
            raise AssertionError(f"job {job_id} not finished after {timeout:g}s; last answer: {body}")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "a condition"):
    """Poll predicate() until it returns something truthy (which is returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
