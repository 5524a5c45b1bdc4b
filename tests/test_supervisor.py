"""`make run`'s supervisor (`python -m scripts.run`): restarts a dead worker, keeps the API and Redis,
starts a private Redis only when none answers, and stops everything on SIGTERM."""

from __future__ import annotations

import signal
import sys

import psutil
import pytest
import requests

from scripts.redis_server import answers
from tests.support import Proc, base_env, free_port, wait_for_job, wait_until


def supervisor_env(redis_url: str, model_path, data_dir) -> dict:
    return base_env(redis_url, MODEL_PATH=str(model_path), PORT=str(free_port()), HOST="127.0.0.1",
                    GUNICORN_WORKERS="1", REDIS_DATA_DIR=str(data_dir))


def start_supervisor(env: dict, log_path) -> Proc:
    proc = Proc([sys.executable, "-m", "scripts.run"], env, log_path)
    wait_until(lambda: "[run] API on" in proc.log_tail() or not proc.alive(), timeout=60,
               what="the supervisor to start its children")
    assert proc.alive(), proc.log_tail()
    return proc


def children(proc: Proc) -> dict[str, int]:
    """The supervisor's live children by role: redis, worker, api (gunicorn's master)."""
    roles = {}
    for child in psutil.Process(proc.process.pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        role = "redis" if "redis-server" in command else "worker" if "-m worker" in command else \
            "api" if "gunicorn" in command else command
        roles[role] = child.pid
    return roles


def all_three(roles: dict[str, int]) -> dict[str, int] | None:
    return roles if {"redis", "worker", "api"} <= set(roles) else None


def api_url(env: dict) -> str:
    return f"http://127.0.0.1:{env['PORT']}"


def status_code(url: str) -> int | None:
    """None while nothing listens yet (the supervisor starts gunicorn in the background)."""
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return None


def stop_supervisor(proc: Proc, pids: list[int]) -> None:
    proc.process.send_signal(signal.SIGTERM)
    try:
        assert proc.process.wait(90) == 0, proc.log_tail()
    finally:
        proc.stop()
    assert "[run] stopping" in proc.log_tail()
    assert not [pid for pid in pids if psutil.pid_exists(pid) and
                psutil.Process(pid).status() != psutil.STATUS_ZOMBIE], "a child outlived the supervisor"


def test_a_killed_worker_is_restarted_and_sigterm_stops_everything(tiny_multilabel_model, tmp_path):
    """No Redis answers at REDIS_URL, so the supervisor also starts (and later stops) a private one."""
    redis_port = free_port()
    env = supervisor_env(f"redis://127.0.0.1:{redis_port}/0", tiny_multilabel_model, tmp_path / "redis")
    proc = start_supervisor(env, tmp_path / "run.log")
    try:
        assert f"no Redis at 127.0.0.1:{redis_port}: starting a private one" in proc.log_tail()
        first = wait_until(lambda: all_three(children(proc)), timeout=30, what="redis, worker and api children")
        assert answers("127.0.0.1", redis_port)
        wait_until(lambda: status_code(api_url(env) + "/readyz") == 200, timeout=120,
                   what="the worker to be ready")

        psutil.Process(first["worker"]).send_signal(signal.SIGKILL)
        wait_until(lambda: "worker exited with code -9; restarting it" in proc.log_tail(), timeout=30,
                   what="the supervisor's restart log line")
        restarted = wait_until(lambda: children(proc).get("worker") not in (None, first["worker"]), timeout=30,
                               what="a new worker child")
        assert restarted
        response = requests.post(api_url(env) + "/generate", json={"input_text": "i love my new puppy"}, timeout=10)
        assert response.status_code == 202
        assert wait_for_job(api_url(env), response.json()["job_id"], timeout=120)["status"] == "succeeded"

        now = children(proc)
        assert now["api"] == first["api"] and now["redis"] == first["redis"]  # untouched by the restart
        stop_supervisor(proc, list(now.values()))
    finally:
        proc.stop()
    assert not answers("127.0.0.1", redis_port)
    with pytest.raises(requests.ConnectionError):
        requests.get(api_url(env) + "/healthz", timeout=5)


def test_an_answering_redis_is_used_not_started(redis_server, tiny_multilabel_model, tmp_path):
    env = supervisor_env(redis_server.url, tiny_multilabel_model, tmp_path / "redis")
    proc = start_supervisor(env, tmp_path / "run.log")
    try:
        wait_until(lambda: status_code(api_url(env) + "/healthz") == 200, timeout=60, what="the API")
        running = children(proc)
        assert set(running) == {"worker", "api"}
        assert "starting a private one" not in proc.log_tail()
        stop_supervisor(proc, list(running.values()))
    finally:
        proc.stop()
    assert answers("127.0.0.1", redis_server.port)
    assert not (tmp_path / "redis").exists()
