"""Promised settings and answers, end to end against real processes: MODERATIONS_TIMEOUT (504), a failed
job through /v1/moderations, POST /generate whose wait runs out (202), RESULT_TTL expiry (404), a publish
that fails after the record was written (503, record removed), CACHE_TTL (entries expire; 0 turns the
cache off; a threshold change is not served stale from it), WORKER_METRICS_PORT=0, and a duplicate
delivery of a finished job (skipped).

Models: "known" (the known-score model, KNOWN_MULTI), "fragile" (random weights whose embedding table
lacks the vocabulary's last token, "~": any text with "~" makes inference raise) and "idle" (no worker
serves it). Two APIs share one Redis: `api` with the defaults and `short_api` with RESULT_TTL=4 and
MODERATIONS_TIMEOUT=2. The worker is restarted with other settings where a test needs them.
"""

from __future__ import annotations

import json
import math
import time
import uuid

import psutil
import pytest
import requests

from shared import metrics as names
from shared.celery_app import make_celery
from shared.config import load_settings
from shared.jobs import KEY_PREFIX, pending_key
from shared.queue_stats import queue_depth
from shared.queues import publish_job, queue_for_model
from tests import scrape
from tests.celery_control import consumer_paused
from tests.conftest import KNOWN_MULTI, MULTI_LABELS
from tests.support import RedisMonitor, base_env, free_port, start_api, start_worker, wait_for_job, wait_until
from tests.tiny_models import build_tiny_model
from worker.redelivery import UNACKED_HASH

SHORT_TTL, SHORT_TIMEOUT = 4, 2
CACHE_PREFIX = "moderation:cache:"  # worker/cache.py
# Worker settings per test group (the worker is restarted when a test needs other ones).
SHORT_CACHE = {"CACHE_TTL": "3"}  # and a metrics port (base_env picks a free one)
OVERRIDE_NO_METRICS = {"MODEL_THRESHOLDS": json.dumps({"known": {"hate": 0.4}}), "WORKER_METRICS_PORT": "0",
                       "RESULT_TTL": str(SHORT_TTL)}
CACHE_OFF = {"CACHE_TTL": "0"}


class Stack:
    def __init__(self, redis_server, paths: dict, logs):
        self.redis = redis_server.client()
        self.redis.flushall()
        self.logs = logs
        self.env = base_env(redis_server.url, MODELS=",".join(f"{n}={p}" for n, p in paths.items()),
                            DEFAULT_MODEL="known", WORKER_MODELS="known,fragile",
                            # Known scores are checked exactly: the reference engine, torch fp32 (dynamic int8
                            # moves a score with the other texts of its pass; tests/test_engine*.py cover it).
                            ENGINE="torch", QUANTIZE="none")
        self.apis = []
        self.worker = None
        self.worker_settings: dict | None = None
        self.workers_started = 0

    def start(self):
        self.api = self.start_api("api", self.env)
        self.short_api = self.start_api("short-api", {**self.env, "RESULT_TTL": str(SHORT_TTL),
                                                      "MODERATIONS_TIMEOUT": str(SHORT_TIMEOUT)})

    def start_api(self, name: str, env: dict):
        api = start_api(env, self.logs / f"{name}.log", workers=1)
        self.apis.append(api)
        return api

    def worker_with(self, settings: dict):
        """The worker, running with base settings plus `settings` (restarted if it runs with others)."""
        if self.worker is not None and self.worker.alive() and self.worker_settings == settings:
            return self.worker
        self.stop_worker()
        self.workers_started += 1
        env = {**self.env, "WORKER_METRICS_PORT": str(free_port()), **settings}
        self.worker = start_worker(env, self.logs / f"worker-{self.workers_started}.log", models=["known", "fragile"])
        self.worker.metrics_port = int(env["WORKER_METRICS_PORT"])
        self.worker_settings = settings
        return self.worker

    def stop_worker(self):
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def stop(self):
        self.stop_worker()
        for api in self.apis:
            api.stop()

    def metrics(self) -> dict:
        return scrape.worker_samples(f"http://127.0.0.1:{self.worker.metrics_port}/metrics")

    def cache_keys(self) -> set[str]:
        return set(self.redis.scan_iter(CACHE_PREFIX + "*"))


@pytest.fixture(scope="module")
def stack(redis_server, known_multilabel_model, tmp_path_factory):
    fragile = build_tiny_model(tmp_path_factory.mktemp("fragile"), MULTI_LABELS, multi_label=True, missing_tokens=1)
    paths = {"known": known_multilabel_model, "fragile": fragile, "idle": known_multilabel_model}
    stack = Stack(redis_server, paths, tmp_path_factory.mktemp("settings-logs"))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def unique(text: str) -> str:
    """A text no earlier test sent (so the result cache has never seen it) with the same markers."""
    return f"{text} {uuid.uuid4().int % 10**9}"


def post(url: str, path: str, body: dict, timeout: float = 40) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = requests.post(url + path, json=body, timeout=timeout)
    return response, time.monotonic() - started


def moderate(stack, text: str) -> dict:
    """One text through POST /generate on the "known" model, waiting for the result."""
    response, _ = post(stack.api.url, "/generate", {"input_text": text, "wait": 20})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded", job
    return job["results"][0]


def assert_known_scores(result: dict, text: str) -> None:
    for label, score in KNOWN_MULTI.scores(text).items():
        assert math.isclose(result["category_scores"][label], score, abs_tol=1e-5), (label, result)


# --- no worker needed -------------------------------------------------------------------------------

def test_generate_whose_wait_runs_out_answers_202_with_the_queued_job(stack):
    response, seconds = post(stack.api.url, "/generate", {"input_text": "hello", "model": "idle", "wait": 1})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and response.headers["Location"] == body["status_url"]
    assert seconds >= 0.9  # it did wait before answering
    assert requests.get(stack.api.url + body["status_url"], timeout=5).json()["status"] == "queued"


def test_moderations_answers_504_after_moderations_timeout(stack):
    response, seconds = post(stack.short_api.url, "/v1/moderations", {"input": "hello", "model": "idle"})
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["code"] == "timeout" and error["status_url"] == f"/jobs/{error['job_id']}"
    # MODERATIONS_TIMEOUT=2 (the default is 30); the upper bound only says it did not wait for the default.
    assert SHORT_TIMEOUT - 0.1 <= seconds < 20
    assert requests.get(stack.api.url + error["status_url"], timeout=5).json()["status"] == "queued"  # kept


def test_result_ttl_expires_an_unfinished_record(stack):
    response, _ = post(stack.short_api.url, "/generate", {"input_text": "hello", "model": "idle"})
    assert response.status_code == 202
    url = stack.api.url + response.json()["status_url"]
    assert requests.get(url, timeout=5).status_code == 200
    wait_until(lambda: requests.get(url, timeout=5).status_code == 404, timeout=SHORT_TTL + 15,
               what=f"the record to expire (RESULT_TTL={SHORT_TTL})")
    assert requests.get(url, timeout=5).json()["error"]["code"] == "not_found"


def test_a_failed_publish_removes_the_record_it_wrote_and_answers_503(stack, redis_server):
    """The broker refuses connections (nothing listens on its port) while the records Redis works."""
    env = {**stack.env, "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    api = stack.start_api("no-broker-api", env)
    try:
        with RedisMonitor(redis_server.url) as monitor:
            for path, body in (("/generate", {"input_text": "hello"}), ("/v1/moderations", {"input": "hello"})):
                response, seconds = post(api.url, path, body)
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "unavailable" and response.headers["Retry-After"] == "1"
                assert seconds < 10  # fails fast: one publish retry, no back-off (shared/celery_app.py)
        job_commands = [c.split()[:2] for c in monitor.commands if c.split()[1:2]
                        and c.split()[1].startswith(KEY_PREFIX)]
        written = {key for name, key in job_commands if name.upper() == "HSET"}
        deleted = {key for name, key in job_commands if name.upper() == "DEL"}
        assert len(written) == 2 and deleted == written, monitor.commands  # written, then removed
        assert not any(stack.redis.exists(key) for key in written)
        assert stack.redis.zcard(pending_key(queue_for_model("known"))) == 0
    finally:
        api.stop()


# --- worker: CACHE_TTL=3, metrics on a port ---------------------------------------------------------

def listening_ports(proc) -> set[int]:
    return {c.laddr.port for c in psutil.Process(proc.process.pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def test_worker_metrics_port_serves_metrics(stack):
    worker = stack.worker_with(SHORT_CACHE)
    assert listening_ports(worker) == {worker.metrics_port}
    assert names.MODEL_LOAD_SECONDS in requests.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text


def test_moderations_answers_a_failed_job_with_500_and_its_id(stack):
    stack.worker_with(SHORT_CACHE)
    ok, _ = post(stack.api.url, "/v1/moderations", {"input": "the weather is nice", "model": "fragile"})
    assert ok.status_code == 200, ok.text  # the model works on words it has
    response, _ = post(stack.api.url, "/v1/moderations", {"input": ["the weather is nice", "nice ~ weather"],
                                                          "model": "fragile"})
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "job_failed" and error["message"].startswith("inference failed: IndexError")
    job = requests.get(f"{stack.api.url}/jobs/{error['job_id']}", timeout=5).json()
    assert job["status"] == "failed" and job["error"] == error["message"] and job["results"] is None


def test_cache_entries_expire_after_cache_ttl(stack):
    stack.worker_with(SHORT_CACHE)
    text = unique("you are an idiot")
    before = stack.cache_keys()
    assert_known_scores(moderate(stack, text), text)
    (key,) = stack.cache_keys() - before
    assert 0 < stack.redis.ttl(key) <= 3
    # A marker value in the entry shows whether an answer came from the cache.
    stack.redis.set(key, json.dumps([0.01, 0.02, 0.03]), keepttl=True)
    assert list(moderate(stack, text)["category_scores"].values()) == [0.01, 0.02, 0.03]
    wait_until(lambda: not stack.redis.exists(key), timeout=15, what="the cache entry to expire (CACHE_TTL=3)")
    assert_known_scores(moderate(stack, text), text)  # computed again


def test_a_duplicate_delivery_of_a_finished_job_is_skipped(stack):
    worker = stack.worker_with(SHORT_CACHE)
    text = unique("we should kill all martians")
    response, _ = post(stack.api.url, "/generate", {"input_text": text})
    job_id = response.json()["job_id"]
    first = wait_for_job(stack.api.url, job_id)
    assert first["status"] == "succeeded"
    before = stack.metrics()
    # The same task message again, as a redelivery would bring it (same task id, same args).
    publish_job(make_celery(load_settings(stack.env)), job_id, "known", time.time())
    wait_until(lambda: f"job {job_id} is succeeded; skipping" in worker.log_tail(200_000), timeout=30,
               what="the worker to take the duplicate")
    after = stack.metrics()
    assert requests.get(f"{stack.api.url}/jobs/{job_id}", timeout=5).json() == first  # result written once
    for name, labels in ((names.JOBS_COMPLETED_TOTAL, {"status": "succeeded"}), (names.BATCH_SIZE + "_count", {}),
                         (names.TEXTS_PROCESSED_TOTAL, {})):
        assert scrape.metric(after, name, "known", **labels) == scrape.metric(before, name, "known", **labels), name


def test_duplicate_messages_of_a_queued_job_run_it_once(stack):
    """Two copies of one job's message waiting together (a re-publish racing the original) reach the
    worker as a backlog, most likely in one batch: the job is scored and counted once."""
    worker = stack.worker_with(SHORT_CACHE)
    text = unique("you idiot")
    queue = queue_for_model("known")
    before = stack.metrics()
    with consumer_paused(stack.env, worker.nodename, queue):
        response, _ = post(stack.api.url, "/generate", {"input_text": text})
        job_id = response.json()["job_id"]
        publish_job(make_celery(load_settings(stack.env)), job_id, "known", time.time())
        wait_until(lambda: queue_depth(stack.redis, queue) == 2, timeout=30, what="both copies in the queue")
    job = wait_for_job(stack.api.url, job_id)
    assert job["status"] == "succeeded"
    assert_known_scores(job["results"][0], text)
    wait_until(lambda: queue_depth(stack.redis, queue) == 0 and not stack.redis.hlen(UNACKED_HASH), timeout=30,
               what="both copies taken and acknowledged")
    after = stack.metrics()
    for name, labels in ((names.JOBS_COMPLETED_TOTAL, {"status": "succeeded"}), (names.TEXTS_PROCESSED_TOTAL, {}),
                         (names.BATCH_SIZE + "_sum", {})):
        grew = scrape.metric(after, name, "known", **labels) - scrape.metric(before, name, "known", **labels)
        assert grew == 1, (name, grew)
    assert requests.get(f"{stack.api.url}/jobs/{job_id}", timeout=5).json() == job


# --- worker: MODEL_THRESHOLDS override, WORKER_METRICS_PORT=0, RESULT_TTL=4 -------------------------

def test_a_threshold_change_is_not_served_stale_from_the_cache(stack):
    """The cache keeps scores, not verdicts: after a restart with a lower hate threshold, a cached text
    gets the new verdict."""
    stack.worker_with(SHORT_CACHE)
    text = unique("we should hate martians")
    before = stack.cache_keys()
    result = moderate(stack, text)
    assert result["category_scores"]["hate"] == pytest.approx(0.45) and result["flagged"] is False  # 0.6
    (key,) = stack.cache_keys() - before
    # Marker scores (hate 0.42: under the old threshold 0.6, over the new 0.4) that outlive the short TTL.
    stack.redis.set(key, json.dumps([0.42, 0.01, 0.02]), ex=600)
    stack.worker_with(OVERRIDE_NO_METRICS)
    result = moderate(stack, text)
    assert result["category_scores"] == {"hate": 0.42, "harassment": 0.01, "violence": 0.02}  # from the cache
    assert result["categories"] == {"hate": True, "harassment": False, "violence": False}
    assert result["flagged"] is True


def test_worker_metrics_port_0_opens_no_port(stack):
    worker = stack.worker_with(OVERRIDE_NO_METRICS)
    assert listening_ports(worker) == set()
    assert "metrics on" not in worker.log_tail(200_000)


def test_result_ttl_expires_a_finished_job(stack):
    stack.worker_with(OVERRIDE_NO_METRICS)  # RESULT_TTL=4 here too: finishing refreshes the expiry
    response, _ = post(stack.short_api.url, "/generate", {"input_text": unique("hello"), "wait": 20})
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    url = f"{stack.api.url}/jobs/{response.json()['job_id']}"
    assert requests.get(url, timeout=5).json()["status"] == "succeeded"
    wait_until(lambda: requests.get(url, timeout=5).status_code == 404, timeout=SHORT_TTL + 15,
               what=f"the finished record to expire (RESULT_TTL={SHORT_TTL})")


# --- worker: CACHE_TTL=0 -----------------------------------------------------------------------------

def test_cache_ttl_0_turns_the_cache_off(stack):
    stack.worker_with(CACHE_OFF)
    text = unique("you idiot we should kill you")
    keys = stack.cache_keys()
    first = moderate(stack, text)
    before = stack.metrics()
    second = moderate(stack, text)
    after = stack.metrics()
    assert_known_scores(first, text)
    assert second == first
    assert stack.cache_keys() == keys  # nothing written
    def grew(name: str) -> float:
        return scrape.metric(after, name, "known") - scrape.metric(before, name, "known")
    hits, passes = grew(names.CACHE_HITS_TOTAL), grew(names.BATCH_SIZE + "_count")
    assert hits == 0 and passes == 1  # the repeat ran the model again
