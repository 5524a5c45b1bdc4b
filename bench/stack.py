"""The processes the benchmark runs: a private Redis, the gunicorn API, `python -m worker`, the sync app.

Built on scripts/launch.py (make run and the integration tests start the same processes the same way).
"""

from __future__ import annotations

import os
import re
import urllib.request

import psutil

from scripts.launch import Proc, base_env

# Worker/API tuning variables the caller may set for a run (base_env drops them otherwise).
TUNABLE = ("BATCH_MAX_TEXTS", "BATCH_MAX_TOKENS", "BATCH_MAX_WAIT_MS", "TORCH_THREADS", "ENGINE", "QUANTIZE",
           "GUNICORN_THREADS", "WORKER_CONCURRENCY")


def service_env(redis_url: str, model_path: str, device: str, **overrides) -> dict[str, str]:
    env = base_env(redis_url, MODEL_PATH=model_path, DEVICE=device, LOG_LEVEL="WARNING",
                   # Every corpus text is distinct and the cache is off, so each one costs a forward pass.
                   CACHE_TTL="0", MAX_QUEUE_DEPTH="1000000", RESULT_TTL="900", MAX_WAIT_SECONDS="60",
                   ENGINE="auto", QUANTIZE="")  # the service as deployed: its default engine
    env.update({name: os.environ[name] for name in TUNABLE if os.environ.get(name)})
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process and (by default) its live children (gunicorn master + workers)."""
    try:
        root = psutil.Process(pid)
        members = [root, *(root.children(recursive=True) if children else ())]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for member in members:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class CpuMeter:
    """CPU seconds each named process tree spent between start() and stop(): where the time goes."""

    def __init__(self, pids: dict[str, int]):
        # The load generator is this process, whose children are the service: count only itself.
        self.pids = {**pids, "clients": os.getpid()}
        self.spent: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self.started = {name: cpu_seconds(pid, name != "clients") for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc) -> None:
        self.spent = {name: cpu_seconds(pid, name != "clients") - self.started[name]
                      for name, pid in self.pids.items()}

    def per_item(self, items: int) -> dict[str, float]:
        """CPU milliseconds per item, by process."""
        return {name: seconds * 1000 / items for name, seconds in self.spent.items()}

    def per_item_ms(self, items: int) -> str:
        return ", ".join(f"{name} {ms:.2f}" for name, ms in self.per_item(items).items())


def rss_mb(proc: Proc) -> float:
    """Resident memory of a process and all its children (gunicorn master + workers), in MB."""
    try:
        root = psutil.Process(proc.process.pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def histogram_totals(metrics_url: str, name: str) -> tuple[float, float]:
    """(sum, count) of a Prometheus histogram over all its labels, read from a /metrics page."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}_(sum|count)\{{.*\}} ([0-9.e+-]+)$", line)
        if match:
            if match.group(1) == "sum":
                total += float(match.group(2))
            else:
                count += float(match.group(2))
    return total, count


def histogram_buckets(metrics_url: str, name: str) -> dict[float, float]:
    """A Prometheus histogram's cumulative bucket counts ({le: count}, +Inf as inf) over all its labels."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        match = re.match(rf'{name}_bucket\{{.*le="([^"]+)".*\}} ([0-9.e+-]+)$', line)
        if match:
            bound = float(match.group(1))  # "+Inf" parses as inf
            buckets[bound] = buckets.get(bound, 0.0) + float(match.group(2))
    return buckets


def pass_sizes(before: dict[float, float], after: dict[float, float]) -> dict[int, int]:
    """Forward passes by size between two readings of the pass-size histogram: each bucket's passes
    counted at its middle size ((4, 8] as 6), the nearest a histogram tells."""
    sizes: dict[int, int] = {}
    below, lower = 0.0, 0.0
    for bound in sorted(after):
        cumulative = after[bound] - before.get(bound, 0.0)
        passes = int(round(cumulative - below))
        if passes > 0 and bound != float("inf"):
            size = max(1, int((lower + 1 + bound) // 2))
            sizes[size] = sizes.get(size, 0) + passes
        below, lower = cumulative, bound
    return sizes
