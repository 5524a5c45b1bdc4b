"""End to end over real HTTP: gunicorn API -> Redis/Celery -> `python -m worker` with tiny real models.

Models served: "tiny" and "plain" are the same known-score model (tests/tiny_models.py, KNOWN_MULTI), "tiny"
with a MODEL_THRESHOLDS override; "single" is a known-score single-label model with a safe label;
"random" has random weights (scores vary per text), for ordering checks. Expected numbers come from the
known models' spec or from a plain transformers forward pass, never from the worker's own code.
Every test runs on both brokers (Redis, and RabbitMQ in a private vhost); the stacks use the reference
engine (torch fp32, tests/support.py base_env), so scores are compared exactly.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from contextlib import ExitStack

import pytest
import requests

from tests.conftest import KNOWN_MULTI, KNOWN_SINGLE, MULTI_LABELS, SINGLE_LABELS
from tests.support import base_env, broker_for, start_api, start_worker, wait_for_job

TEXTS = ["i love my new puppy", "we should kill all martians", "you are an idiot", "the weather is nice today",
         "great food from mexico", "i disagree with your tax policy", "we should hate martians",
         "you idiot we should kill you"]
OVERRIDES = {"tiny": {"hate": 0.4}}
# The labels set for each text by the known multi-label model under "tiny"'s thresholds:
# hate 0.4 (MODEL_THRESHOLDS), harassment 0.3 (config.json), violence 0.5 (default).
TINY_SET = {"i love my new puppy": set(), "we should kill all martians": {"violence"},
            "you are an idiot": {"harassment"}, "the weather is nice today": set(), "great food from mexico": set(),
            "i disagree with your tax policy": set(), "we should hate martians": {"hate"},
            "you idiot we should kill you": {"harassment", "violence"}}


@pytest.fixture(scope="module")
def stack(broker_kind, redis_server, known_multilabel_model, known_singlelabel_model, tiny_multilabel_model,
          tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp(f"pipeline-logs-{broker_kind}")
    paths = {"tiny": known_multilabel_model, "plain": known_multilabel_model, "single": known_singlelabel_model,
             "random": tiny_multilabel_model}
    with ExitStack() as cleanup:  # each process is stopped even if a later set-up step fails
        broker = cleanup.enter_context(broker_for(broker_kind, redis_server.url))
        env = base_env(redis_server.url, MODELS=",".join(f"{name}={path}" for name, path in paths.items()),
                       DEFAULT_MODEL="tiny", SAFE_LABELS="ok", MODEL_THRESHOLDS=json.dumps(OVERRIDES),
                       BATCH_MAX_WAIT_MS="20", CELERY_BROKER_URL=broker.url)
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        ready_before = requests.get(api.url + "/readyz", timeout=5)
        worker = cleanup.enter_context(start_worker(env, logs / "worker.log", models=list(paths)))
        yield {"api": api.url, "worker": worker, "ready_before": ready_before, "paths": paths}


def transformers_scores(path, texts: list[str]) -> list[list[float]]:
    """An independent reference: AutoModel + AutoTokenizer, one text per forward pass (no padding),
    then sigmoid or softmax written out by hand."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0].tolist()
            if model.config.problem_type == "multi_label_classification":
                rows.append([1 / (1 + math.exp(-x)) for x in logits])
            else:
                exps = [math.exp(x - max(logits)) for x in logits]
                rows.append([e / sum(exps) for e in exps])
    return rows


def assert_scores(results: list[dict], expected: list[list[float]], labels: list[str]) -> None:
    assert len(results) == len(expected)
    for result, row in zip(results, expected):
        assert list(result["category_scores"]) == labels
        for label, score in zip(labels, row):
            assert math.isclose(result["category_scores"][label], score, abs_tol=1e-5), (label, row, result)


def assert_openai_scores(results: list[dict], expected: list[list[float]], labels: list[str]) -> None:
    """/v1/moderations answers every OpenAI category too: those the model lacks are 0.0, applied to no input."""
    for result in results:
        lacking = [name for name in result["category_scores"] if name not in labels]
        assert all(result["category_scores"][name] == 0.0 and result["categories"][name] is False
                   and result["category_applied_input_types"][name] == [] for name in lacking), result
        for kept in ("category_scores", "categories"):
            result[kept] = {name: value for name, value in result[kept].items() if name in labels}
        result["category_scores"] = {label: result["category_scores"][label] for label in labels}
    assert_scores(results, expected, labels)


def known(spec, texts: list[str]) -> list[list[float]]:
    return [list(spec.scores(text).values()) for text in texts]


def post_job(stack, texts: list[str], model: str | None = None) -> dict:
    body = {"inputs": texts, "wait": 20, **({"model": model} if model else {})}
    response = requests.post(stack["api"] + "/generate", json=body, timeout=30)
    assert response.status_code == 200, response.text  # finished within wait: the full job body
    job = response.json()
    assert job["status"] == "succeeded", job
    return job


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


def test_multi_text_job_keeps_input_order(stack):
    texts = TEXTS + [f"{a} {b}" for a, b in zip(TEXTS, reversed(TEXTS))]
    job = post_job(stack, texts, model="random")
    assert_scores(job["results"], transformers_scores(stack["paths"]["random"], texts), MULTI_LABELS)
    assert len({tuple(r["category_scores"].values()) for r in job["results"]}) == len(texts)  # all distinct


def test_known_model_scores_match_a_plain_transformers_forward_pass(stack):
    for model, spec in (("tiny", KNOWN_MULTI), ("single", KNOWN_SINGLE)):
        reference = transformers_scores(stack["paths"][model], TEXTS)
        assert_scores([{"category_scores": dict(zip(spec.labels, row))} for row in reference], known(spec, TEXTS),
                      list(spec.labels))  # the hand-built weights do what the spec says


def test_thresholds_and_flagged_follow_the_policy(stack):
    job = post_job(stack, TEXTS)
    assert_scores(job["results"], known(KNOWN_MULTI, TEXTS), MULTI_LABELS)
    for text, result in zip(TEXTS, job["results"]):
        assert {label for label, hit in result["categories"].items() if hit} == TINY_SET[text], (text, result)
        assert result["flagged"] == bool(TINY_SET[text]), (text, result)


def test_model_thresholds_override_decides_the_result(stack):
    """hate scores 0.45: flagged under "tiny" (MODEL_THRESHOLDS 0.4), not under "plain" (config.json's 0.6)."""
    text = "we should hate martians"
    assert math.isclose(KNOWN_MULTI.scores(text)["hate"], 0.45)
    tiny, plain = (post_job(stack, [text], model)["results"][0] for model in ("tiny", "plain"))
    assert tiny["category_scores"] == plain["category_scores"]
    assert tiny["categories"]["hate"] is True and tiny["flagged"] is True
    assert plain["categories"]["hate"] is False and plain["flagged"] is False
    by_name = {m["name"]: m for m in requests.get(stack["api"] + "/models", timeout=5).json()["models"]}
    assert by_name["tiny"]["thresholds"] == {"hate": 0.4, "harassment": 0.3, "violence": 0.5}
    assert by_name["plain"]["thresholds"] == {"hate": 0.6, "harassment": 0.3, "violence": 0.5}


def test_single_label_model_uses_softmax_and_safe_label_never_flags(stack):
    texts = ["i love my new puppy", "you are an idiot", "we should kill all martians", "kill the idiot"]
    job = post_job(stack, texts, model="single")
    assert job["model"] == "single"
    assert_scores(job["results"], known(KNOWN_SINGLE, texts), SINGLE_LABELS)
    set_labels = [{label for label, hit in r["categories"].items() if hit} for r in job["results"]]
    # "OK" on top (0.79) is reported as set but is a safe label: not flagged. "kill the idiot" puts toxic
    # and insult at 0.495 each, under 0.5: nothing set, not flagged.
    assert set_labels == [{"OK"}, {"insult"}, {"toxic"}, set()]
    assert [r["flagged"] for r in job["results"]] == [False, True, True, False]
    for result in job["results"]:
        assert math.isclose(sum(result["category_scores"].values()), 1.0, abs_tol=1e-4)


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


def test_openai_compatible_moderations(stack):
    one = requests.post(stack["api"] + "/v1/moderations", json={"input": TEXTS[1]}, timeout=40)
    assert one.status_code == 200
    body = one.json()
    served = {m["name"]: m["id"] for m in requests.get(stack["api"] + "/models", timeout=5).json()["models"]}
    # OpenAI's `model` is the id of the model that ran (the default model here: "tiny").
    assert set(body) == {"id", "model", "results"} and body["model"] == served["tiny"]
    assert_openai_scores(body["results"], known(KNOWN_MULTI, TEXTS[1:2]), MULTI_LABELS)
    assert body["results"][0]["flagged"] is True
    many = requests.post(stack["api"] + "/v1/moderations", json={"input": TEXTS, "model": "single"}, timeout=40)
    assert many.status_code == 200
    assert_openai_scores(many.json()["results"], known(KNOWN_SINGLE, TEXTS), SINGLE_LABELS)


def test_models_lists_labels_thresholds_and_live_workers(stack):
    body = requests.get(stack["api"] + "/models", timeout=5).json()
    assert body["default_model"] == "tiny"
    by_name = {m["name"]: m for m in body["models"]}
    assert by_name["tiny"]["labels"] == MULTI_LABELS and by_name["tiny"]["thresholds"]["hate"] == 0.4
    assert by_name["single"]["safe_labels"] == ["OK"] and by_name["single"]["multi_label"] is False
    assert all(model["live_workers"] == 1 for model in by_name.values())


def test_unknown_model_is_400(stack):
    response = requests.post(stack["api"] + "/generate", json={"input_text": "hi", "model": "nope"}, timeout=5)
    assert response.status_code == 400 and "nope" in response.json()["error"]["message"]
