"""The worker's container healthcheck (`python -m worker.healthcheck`) and the settings that let
several worker replicas share one host network (WORKER_METRICS_PORT ranges, unique node names)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest
import requests

from shared import worker_registry
from shared.config import DEFAULT_SAFE_LABELS, ConfigError, load_settings
from tests.support import base_env, free_port, start_worker


def test_metrics_port_takes_a_single_port_or_a_range():
    assert (load_settings({}).worker_metrics_port, load_settings({}).worker_metrics_port_last) == (9101, 9101)
    single = load_settings({"WORKER_METRICS_PORT": "9200"})
    assert (single.worker_metrics_port, single.worker_metrics_port_last) == (9200, 9200)
    ranged = load_settings({"WORKER_METRICS_PORT": "9101-9103"})
    assert (ranged.worker_metrics_port, ranged.worker_metrics_port_last) == (9101, 9103)
    assert load_settings({"WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0


@pytest.mark.parametrize("value", ["9103-9101", "a-b", "0-5", "9101-70000"])
def test_bad_metrics_port_ranges_are_config_errors(value):
    with pytest.raises(ConfigError, match="WORKER_METRICS_PORT"):
        load_settings({"WORKER_METRICS_PORT": value})


def test_empty_safe_labels_mean_the_default():
    # docker-compose.yaml passes every setting through, empty when unset.
    assert load_settings({"SAFE_LABELS": ""}).safe_labels == load_settings({}).safe_labels
    assert "ok" in load_settings({"SAFE_LABELS": " "}).safe_labels
    assert DEFAULT_SAFE_LABELS.startswith("ok,")


def test_is_live_needs_a_fresh_heartbeat_for_every_model(redis_client):
    assert not worker_registry.is_live(redis_client, "w1", ["a"])
    worker_registry.heartbeat(redis_client, "w1", ["a"])
    assert worker_registry.is_live(redis_client, "w1", ["a"])
    assert not worker_registry.is_live(redis_client, "w1", ["a", "b"])
    assert not worker_registry.is_live(redis_client, "w2", ["a"])
    redis_client.zadd("moderation:workers:a", {"w1": time.time() - worker_registry.LIVE_WINDOW - 1})
    assert not worker_registry.is_live(redis_client, "w1", ["a"])


def start_on_a_free_pair(envs: list[dict], workers: list, tmp_path, tries: int = 5) -> int:
    """Both workers on one range of two free ports; the first port. Another process on this machine may
    take a port between the check and the bind (a busy CI host): then the pair is picked again."""
    for attempt in range(tries):
        first = free_port()
        while not port_free(first + 1):
            first = free_port()
        try:
            for i, env in enumerate(envs):
                env["WORKER_METRICS_PORT"] = f"{first}-{first + 1}"
                workers.append(start_worker(env, tmp_path / f"worker{i}-{attempt}.log", models=["tiny"]))
            return first
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == tries - 1:
                raise
            while workers:
                workers.pop().stop()
    raise AssertionError("unreachable")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def healthcheck(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.healthcheck"], env=env, capture_output=True, text=True,
                          timeout=30)


def test_two_workers_on_one_host_get_their_own_ports_names_and_healthchecks(
        redis_server, redis_client, tiny_multilabel_model, tmp_path):
    """As worker replicas with host networking: one port range, one host name, private /tmp each."""
    workers, envs = [], []
    try:
        for i in range(2):
            (tmp_path / f"tmp{i}").mkdir()
            env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", WORKER_METRICS_PORT="0",
                           TMPDIR=str(tmp_path / f"tmp{i}"))
            envs.append(env)
            assert healthcheck(env).returncode == 1, "healthy before the worker started"
        first = start_on_a_free_pair(envs, workers, tmp_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and redis_client.zcard("moderation:workers:tiny") < 2:
            time.sleep(0.2)
        names = redis_client.zrange("moderation:workers:tiny", 0, -1)
        assert len(names) == 2, names
        bound = sorted(int(m) for w in workers
                       for m in re.findall(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", w.log_tail(100_000)))
        assert bound == [first, first + 1]
        for port in bound:
            assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        for env in envs:
            result = healthcheck(env)
            assert result.returncode == 0, result.stderr
        workers[0].stop()  # warm shutdown: leaves the registry
        result = healthcheck(envs[0])
        assert result.returncode == 1 and "no fresh heartbeat" in result.stderr
        assert healthcheck(envs[1]).returncode == 0
        assert healthcheck({**envs[1], "REDIS_URL": "redis://127.0.0.1:1/0"}).returncode == 1
    finally:
        for worker in workers:
            worker.stop()
