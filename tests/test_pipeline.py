"""End to end over real HTTP: gunicorn API -> Redis/Celery -> `python -m worker` with tiny real models,
on both brokers (Redis, and RabbitMQ in a private vhost)."""

from __future__ import annotations

import math
import time
import uuid
from contextlib import ExitStack

import pytest
import requests

from tests.conftest import MULTI_LABELS, SINGLE_LABELS
from tests.support import base_env, broker_for, start_api, start_worker, wait_for_job
from worker.inference import TextClassifier

TEXTS = ["i love my new puppy", "we should kill all martians", "you are an idiot", "the weather is nice today",
         "great food from mexico", "i disagree with your tax policy"]


@pytest.fixture(scope="module")
def stack(broker_kind, redis_server, tiny_multilabel_model, tiny_singlelabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp(f"pipeline-logs-{broker_kind}")
    with ExitStack() as cleanup:  # each process is stopped even if a later set-up step fails
        broker = cleanup.enter_context(broker_for(broker_kind, redis_server.url))
        env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model},single={tiny_singlelabel_model}",
                       DEFAULT_MODEL="tiny", SAFE_LABELS="ok", BATCH_MAX_WAIT_MS="20", CELERY_BROKER_URL=broker.url)
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        ready_before = requests.get(api.url + "/readyz", timeout=5)
        worker = cleanup.enter_context(start_worker(env, logs / "worker.log", models=["tiny", "single"]))
        yield {"api": api.url, "worker": worker, "ready_before": ready_before,
               "paths": {"tiny": tiny_multilabel_model, "single": tiny_singlelabel_model}}


@pytest.fixture(scope="module")
def reference(stack):
    """The same models run in-process, one text at a time: what every job's result must equal."""
    return {name: TextClassifier(str(path), device="cpu", threads=1) for name, path in stack["paths"].items()}


def assert_matches(results, texts, classifier, labels):
    assert len(results) == len(texts)
    for text, result in zip(texts, results):
        expected = classifier.scores([text])[0]
        assert list(result["category_scores"]) == labels
        for label, score in zip(labels, expected):
            assert math.isclose(result["category_scores"][label], score, abs_tol=1e-4), (text, label)


def test_readyz_is_503_until_a_worker_serves_the_default_model(stack):
    before = stack["ready_before"]
    assert before.status_code == 503
    assert "no live worker" in before.json()["error"]["message"]
    after = requests.get(stack["api"] + "/readyz", timeout=5)
    assert after.status_code == 200 and after.json()["workers"] == 1


def test_single_text_202_then_poll(stack):
    response = requests.post(stack["api"] + "/generate", json={"input_text": TEXTS[0]}, timeout=10)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["model"] == "tiny"
    assert uuid.UUID(body["job_id"]).version == 4
    assert body["status_url"] == f"/jobs/{body['job_id']}" and response.headers["Location"] == body["status_url"]
    job = wait_for_job(stack["api"], body["job_id"])
    assert job["status"] == "succeeded" and job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    result = job["results"][0]
    assert set(result) == {"flagged", "categories", "category_scores"}
    assert set(result["categories"]) == set(MULTI_LABELS)


def test_multi_text_job_keeps_input_order(stack, reference):
    response = requests.post(stack["api"] + "/generate", json={"inputs": TEXTS, "wait": 20}, timeout=30)
    assert response.status_code == 200, response.text  # finished within wait: the full job body
    job = response.json()
    assert job["status"] == "succeeded"
    assert_matches(job["results"], TEXTS, reference["tiny"], MULTI_LABELS)


def test_thresholds_and_flagged_follow_the_policy(stack):
    job = requests.post(stack["api"] + "/generate", json={"inputs": TEXTS, "wait": 20}, timeout=30).json()
    for result in job["results"]:
        for label, score in result["category_scores"].items():
            threshold = 0.4 if label == "hate" else 0.5
            assert result["categories"][label] == (score >= threshold)
        assert result["flagged"] == any(result["categories"].values())


def test_single_label_model_uses_softmax_and_safe_label_never_flags(stack, reference):
    job = requests.post(stack["api"] + "/generate", json={"inputs": TEXTS, "model": "single", "wait": 20},
                        timeout=30).json()
    assert job["model"] == "single"
    assert_matches(job["results"], TEXTS, reference["single"], SINGLE_LABELS)
    for result in job["results"]:
        assert math.isclose(sum(result["category_scores"].values()), 1.0, abs_tol=1e-4)
        assert result["flagged"] == (result["categories"]["toxic"] or result["categories"]["insult"])


def test_get_wait_returns_when_the_job_finishes(stack):
    job_id = requests.post(stack["api"] + "/generate", json={"input_text": "hello there"}, timeout=10).json()["job_id"]
    started = time.monotonic()
    body = requests.get(f"{stack['api']}/jobs/{job_id}", params={"wait": 25}, timeout=30).json()
    assert body["status"] == "succeeded"
    assert time.monotonic() - started < 20  # woke on the job's pub/sub message, not at the deadline


def test_get_wait_on_an_unfinished_job_returns_its_state_after_the_wait(stack, redis_server):
    from shared.jobs import JobRecord, JobStore
    store = JobStore(redis_server.client(), 60)
    record = JobRecord(job_id=str(uuid.uuid4()), model="tiny")  # a record no worker will ever see
    store.create(record)
    started = time.monotonic()
    body = requests.get(f"{stack['api']}/jobs/{record.job_id}", params={"wait": 1}, timeout=10).json()
    assert body["status"] == "queued" and time.monotonic() - started >= 0.9


def test_unknown_and_malformed_job_ids_are_404(stack):
    for job_id in (str(uuid.uuid4()), "not-a-uuid", str(uuid.uuid1())):
        response = requests.get(f"{stack['api']}/jobs/{job_id}", timeout=5)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_openai_compatible_moderations(stack, reference):
    one = requests.post(stack["api"] + "/v1/moderations", json={"input": TEXTS[1]}, timeout=40)
    assert one.status_code == 200
    body = one.json()
    assert set(body) == {"id", "model", "results"} and body["model"] == "tiny"
    assert_matches(body["results"], TEXTS[1:2], reference["tiny"], MULTI_LABELS)
    many = requests.post(stack["api"] + "/v1/moderations", json={"input": TEXTS, "model": "single"}, timeout=40)
    assert many.status_code == 200 and len(many.json()["results"]) == len(TEXTS)


def test_models_lists_labels_thresholds_and_live_workers(stack):
    body = requests.get(stack["api"] + "/models", timeout=5).json()
    assert body["default_model"] == "tiny"
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["tiny"]["labels"] == MULTI_LABELS and by_name["tiny"]["thresholds"]["hate"] == 0.4
    assert by_name["single"]["safe_labels"] == ["OK"] and by_name["single"]["multi_label"] is False
    assert by_name["tiny"]["live_workers"] == 1 and by_name["single"]["live_workers"] == 1


def test_unknown_model_is_400(stack):
    response = requests.post(stack["api"] + "/generate", json={"input_text": "hi", "model": "nope"}, timeout=5)
    assert response.status_code == 400 and "nope" in response.json()["error"]["message"]
