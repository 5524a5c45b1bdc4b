"""The one place that knows how to launch the service's processes: Redis, `python -m worker`, gunicorn.

Used by `make run` (scripts/run.py), the benchmark (bench/) and the integration tests (tests/support.py).
Every child started through `Proc` runs in its own process group (so a stop reaches gunicorn's workers
and anything a worker spawned) and is registered the moment it exists: `stop_all()` (run at exit, and
by the test session's finaliser) stops whatever a failed set-up or teardown left behind.
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import socket
import subprocess
import sys
import time
import weakref
from contextlib import closing
from pathlib import Path

import redis
import requests

from scripts import redis_server
from shared.redis_client import store_client
from shared.worker_registry import live_workers

ROOT = Path(__file__).resolve().parent.parent
_LIVE: weakref.WeakSet = weakref.WeakSet()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "worker"]


def api_command(app: str = "api:create_app()") -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", "api/gunicorn_conf.py", app]


# Variables a launched stack sets itself; the caller's environment must not leak them in.
_OWN_PREFIXES = ("MODEL", "WORKER_", "RATE_", "API_KEYS", "BATCH_", "CACHE_", "PROMETHEUS_", "CELERY_",
                 "MAX_", "VISIBILITY_", "READ_RATE_", "WEBHOOK_", "ENGINE", "TOKEN_RATE_", "SLICE_",
                 "JOB_TIMEOUT", "REDIS_CLUSTER", "REDIS_WAIT_")


def base_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """This environment minus the service's own settings, plus REDIS_URL, a free metrics port and `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    # ENGINE/QUANTIZE: the reference engine (torch fp32), whose scores do not depend on the other texts
    # of a forward pass, so tests can compare exact scores; tests of the default engine pass ENGINE="auto".
    env.update({"REDIS_URL": redis_url, "RATE_LIMITER": "off", "READ_RATE_LIMITER": "off",
                "TOKEN_RATE_LIMITER": "off", "LOG_LEVEL": "INFO",
                "ENGINE": "torch", "QUANTIZE": "none",
                "WORKER_METRICS_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1, what="a condition"):
    """Poll predicate() until it returns something truthy (which is returned); fail after `timeout` s. `what`
    names the condition: a string, or a callable whose text is made on failure (a log tail as it is then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


class Proc:
    """A child process in its own process group, output in a log file; a context manager that stops it."""

    def __init__(self, argv: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self.log_file = open(log_path, "ab")
        self.process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE.add(self)
        self.env = env

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

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
        else:
            self.signal_group(signal.SIGKILL)  # the leader is gone; anything left in its group goes too
        self.log_file.close()
        _LIVE.discard(self)
        return self.process.returncode


def stop_all() -> None:
    """Stop every child still registered (a failed set-up or teardown left it)."""
    for proc in list(_LIVE):
        proc.stop(timeout=10)


atexit.register(stop_all)


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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


def start_worker(env: dict, log_path: Path, models: list[str] | None = None, timeout: float = 120,
                 argv: list[str] | None = None) -> Proc:
    """`python -m worker` (or `argv`: tests/hooked_worker.py's); returns once its heartbeat says it consumes its
    queues (stops it on failure)."""
    proc = Proc(argv or worker_command(), env, log_path)
    try:
        cluster = env.get("REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes", "on")
        client = store_client(env["REDIS_URL"], cluster)  # a RedisCluster with REDIS_CLUSTER
        names = models or [m.split("=")[0] for m in env.get("WORKER_MODELS", "").split(",") if m] or \
            [m.split("=")[0] for m in env.get("MODELS", "default=").split(",")]

        def ready():
            if not proc.alive():
                raise RuntimeError(f"worker exited with {proc.process.returncode}:\n{proc.log_tail()}")
            try:
                return all(count >= 1 for count in live_workers(client, names).values()) and \
                    f"moderation-{proc.process.pid}@" in proc.log_tail(100_000)
            except redis.RedisError:
                return False
        wait_until(ready, timeout, interval=0.2, what=f"the worker to be ready:\n{proc.log_tail()}")
        # Its Celery node name (worker/deliveries.py: worker_name), for remote control of this one worker.
        proc.nodename = re.search(rf"moderation-{proc.process.pid}@[\w.-]*\w", proc.log_tail(100_000)).group(0)
    except BaseException:
        proc.stop()
        raise
    return proc


class ApiServer(Proc):
    """gunicorn with the API's settings; `app` is the WSGI app (the benchmark also serves bench.sync_app)."""

    def __init__(self, env: dict, log_path: Path, workers: int = 2, app: str = "api:create_app()"):
        self.port = free_port()
        env = {**env, "PORT": str(self.port), "HOST": "127.0.0.1", "GUNICORN_WORKERS": str(workers)}
        super().__init__(api_command(app), env, log_path)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> ApiServer:
        def up():
            if not self.alive():
                raise RuntimeError(f"API exited:\n{self.log_tail()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).ok
            except requests.RequestException:
                return False
        try:
            wait_until(up, timeout, what="the API to answer /healthz")
        except BaseException:
            self.stop()
            raise
        return self


def start_api(env: dict, log_path: Path, workers: int = 2, app: str = "api:create_app()",
              timeout: float = 30) -> ApiServer:
    return ApiServer(env, log_path, workers, app).wait_ready(timeout)
