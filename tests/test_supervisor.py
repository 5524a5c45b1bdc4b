"""`make run`'s supervisor (`python -m scripts.run`): restarts a dead worker, keeps the API and Redis,
keeps watching every child while one backs off, starts a private Redis only for a local REDIS_URL that
does not answer, runs WORKERS worker processes, and stops everything on SIGTERM."""

from __future__ import annotations

import signal
import sys
import time

import psutil
import pytest
import requests

from scripts.redis_server import answers
from scripts.run import Child, private_redis, supervise_once
from shared.worker_registry import live_workers
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


def worker_children(proc: Proc) -> list[int]:
    return [child.pid for child in psutil.Process(proc.process.pid).children()
            if child.status() != psutil.STATUS_ZOMBIE and "-m worker" in " ".join(child.cmdline())]


def test_an_answering_redis_is_used_not_started_and_workers_2_runs_two(redis_server, tiny_multilabel_model,
                                                                       tmp_path):
    env = {**supervisor_env(redis_server.url, tiny_multilabel_model, tmp_path / "redis"), "WORKERS": "2",
           "WORKER_METRICS_PORT": "0"}
    proc = start_supervisor(env, tmp_path / "run.log")
    try:
        wait_until(lambda: status_code(api_url(env) + "/healthz") == 200, timeout=60, what="the API")
        running = children(proc)
        assert set(running) == {"worker", "api"}
        assert len(workers := worker_children(proc)) == 2
        assert "starting a private one" not in proc.log_tail() and "2 worker process(es)" in proc.log_tail()
        wait_until(lambda: live_workers(redis_server.client(), ["default"])["default"] == 2, timeout=180,
                   what="both workers to serve the default model")
        stop_supervisor(proc, [running["api"], *workers])
    finally:
        proc.stop()
    assert answers("127.0.0.1", redis_server.port)
    assert not (tmp_path / "redis").exists()


def test_every_child_is_watched_while_one_backs_off(capsys):
    """A child in its restart back-off must not blind the supervisor to the others (real processes)."""
    crashing = Child("crashing", ["false"])  # exits at once, every time: its back-off grows
    steady = Child("steady", ["sleep", "60"])
    children = [crashing, steady]
    try:
        for child in children:
            child.start()
        wait_until(lambda: crashing.process.poll() is not None, timeout=10, what="the crashing child to exit")
        supervise_once(children)
        assert crashing.restart_at is not None and crashing.restart_at - time.monotonic() > 1.5  # backing off
        steady.process.kill()
        steady.process.wait(5)
        killed_at = time.monotonic()
        supervise_once(children)  # one pass notices the other death while the first child still waits
        assert steady.restart_at is not None and time.monotonic() - killed_at < 1.0
        assert crashing.restart_at > time.monotonic()
        assert "steady exited with code -9; restarting it in" in capsys.readouterr().out
        wait_until(lambda: (supervise_once(children), steady.restart_at is None)[1], timeout=5, interval=0.1,
                   what="the steady child to be started again")
        assert steady.process.poll() is None
    finally:
        for child in children:
            if child.process and child.process.poll() is None:
                child.process.kill()
                child.process.wait(5)


@pytest.mark.parametrize("url, starts", [
    ("redis://127.0.0.1:{free}/0", True),           # local and silent: start a private one
    ("redis://localhost:{free}/0", True),
    ("redis://:secret@127.0.0.1:{free}/0", False),  # password-protected: someone else's server
    ("redis://redis.example.internal:6379/0", False),  # remote: never ours to start
    ("redis://127.0.0.1:{answering}/0", False),     # answers: use it
])
def test_a_private_redis_only_for_a_local_url_that_does_not_answer(redis_server, url, starts):
    url = url.format(free=free_port(), answering=redis_server.port)
    assert (private_redis({"REDIS_URL": url}) is not None) == starts


@pytest.mark.parametrize("given, expected", [
    ("9200", ["9200", "9201", "9202"]),  # one port: the next workers take the ports after it
    ("9101-9103", ["9101-9103"] * 3),  # a range: each worker takes the first free port of it
    ("0", ["0"] * 3),  # off stays off
    ("", ["9101", "9102", "9103"]),  # unset (compose passes it empty): the default, 9101
])
def test_workers_3_gives_each_worker_its_metrics_port(given, expected):
    from scripts.run import children_for
    env = {"REDIS_URL": "redis://redis.example:6379/0", "WORKERS": "3", "WORKER_METRICS_PORT": given}
    workers = [child for child in children_for(env) if child.name.startswith("worker")]
    assert [child.env["WORKER_METRICS_PORT"] for child in workers] == expected
    assert all(child.env["WORKER_PROCESSES"] == "3" for child in workers)
