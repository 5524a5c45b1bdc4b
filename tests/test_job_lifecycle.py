"""Webhooks, cancellation and the OpenAI model names against a live stack: gunicorn API (API keys on),
a tiny-model worker (which starts the webhook worker process), a private Redis, and a webhook receiver
on 127.0.0.1 run by the test.

Two models share the tiny weights: `tiny` has a worker from the start, `spare` gets one only in the
cancellation test, so its jobs stay queued until then.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from shared.jobs import JobStore
from tests.support import base_env, free_port, start_api, start_worker, wait_until
from tests.webhook_receiver import SLOW_SECONDS, Receiver

SECRET = "webhook-test-secret"
ALICE, BOB = {"Authorization": "Bearer alice-key"}, {"Authorization": "Bearer bob-key"}


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("lifecycle-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model},spare={tiny_multilabel_model}",
                   API_KEYS="alice-key,bob-key", WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_SECRET=SECRET,
                   WEBHOOK_TIMEOUT="2", WEBHOOK_MAX_RETRIES="2")
    worker = start_worker({**env, "WORKER_MODELS": "tiny"}, logs / "worker.log", models=["tiny"])
    api = start_api(env, logs / "api.log")
    yield {"api": api, "env": env, "logs": logs, "worker": worker, "redis": redis_server}
    api.stop()
    worker.stop()


def submit(stack, headers=ALICE, **body) -> requests.Response:
    if "inputs" not in body:
        body.setdefault("input_text", "you are an idiot")
    return requests.post(stack["api"].url + "/generate", json=body, headers=headers, timeout=30)


def job(stack, job_id: str, headers=ALICE, wait: float = 0) -> requests.Response:
    return requests.get(f"{stack['api'].url}/jobs/{job_id}", params={"wait": wait}, headers=headers, timeout=40)


# --- webhooks ------------------------------------------------------------------------------------

def test_webhook_is_signed_and_its_body_is_the_job(stack, receiver):
    created = submit(stack, callback_url=receiver.url("/ok"), wait=10)
    assert created.status_code == 200 and created.json()["status"] == "succeeded", created.text
    job_id = created.json()["job_id"]
    [call] = wait_until(lambda: receiver.calls_to("/ok"), timeout=30, what="the webhook call")
    # No key of these set its own secret: WEBHOOK_SECRET signs (a plain string: its UTF-8 bytes are the key).
    assert Webhook(SECRET.encode()).verify(call["body"], call["headers"])["job_id"] == job_id
    assert call["headers"]["webhook-id"] == job_id and "X-Moderation-Signature" not in call["headers"]
    assert call["headers"]["Content-Type"] == "application/json"
    assert json.loads(call["body"]) == job(stack, job_id).json()  # the same body GET /jobs/<id> answers


def test_webhook_is_retried_after_a_500(stack, receiver):
    job_id = submit(stack, inputs=["one", "two"], callback_url=receiver.url("/flaky")).json()["job_id"]
    calls = wait_until(lambda: len(receiver.calls_to("/flaky")) >= 2 and receiver.calls_to("/flaky"), timeout=30,
                       what="a second delivery after the 500")
    assert calls[0]["body"] == calls[1]["body"]
    # A redelivery keeps its webhook-id (receivers drop duplicates by it) and is signed afresh.
    assert calls[0]["headers"]["webhook-id"] == calls[1]["headers"]["webhook-id"] == job_id
    Webhook(SECRET.encode()).verify(calls[1]["body"], calls[1]["headers"])
    assert json.loads(calls[1]["body"])["job_id"] == job_id
    assert job(stack, job_id).json()["status"] == "succeeded"


def test_a_dead_or_slow_receiver_never_affects_jobs(stack, receiver):
    dead = f"http://127.0.0.1:{free_port()}/gone"
    dead_job = submit(stack, callback_url=dead, wait=10)
    assert dead_job.json()["status"] == "succeeded", dead_job.text
    # Receivers that hold every delivery for SLOW_SECONDS do not hold up other jobs' batches.
    for n in range(3):
        assert submit(stack, input_text=f"slow receiver {n}", callback_url=receiver.url(f"/slow{n}")).status_code == 202
    wait_until(lambda: len([c for c in receiver.calls if c["path"].startswith("/slow")]) >= 3, timeout=30,
               what="the slow receivers to be called")
    started = time.monotonic()
    quick = submit(stack, input_text="while receivers hang", wait=SLOW_SECONDS - 1)
    assert quick.status_code == 200 and quick.json()["status"] == "succeeded", quick.text
    assert time.monotonic() - started < SLOW_SECONDS - 1
    # The dead receiver's delivery is given up after WEBHOOK_MAX_RETRIES retries; the job stays succeeded.
    wait_until(lambda: f"job {dead_job.json()['job_id']}: webhook not delivered after 3 tries" in
               stack["worker"].log_tail(500_000), timeout=60, what="the webhook to be given up")
    assert job(stack, dead_job.json()["job_id"]).json()["status"] == "succeeded"


@pytest.mark.parametrize("url, reason", [
    ("http://10.0.0.1/hook", "host '10.0.0.1' is not in WEBHOOK_ALLOWED_HOSTS"),
    ("http://localhost/hook", "host 'localhost' is not in WEBHOOK_ALLOWED_HOSTS"),
    ("ftp://127.0.0.1/hook", "http:// or https://"),
    ("http://user:pw@127.0.0.1/hook", "credentials"),
    ("not a url", "http:// or https://"),
    ("http://127.0.0.1:99999/", "not a valid URL"),
])
def test_callback_urls_outside_the_allowlist_are_refused(stack, url, reason):
    response = submit(stack, callback_url=url)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("callback_url: ") and reason in response.text


# --- cancellation --------------------------------------------------------------------------------

def test_cancel_a_queued_job_and_the_worker_skips_it(stack):
    api = stack["api"].url
    queued = submit(stack, model="spare").json()["job_id"]
    # Another key: as if the job did not exist.
    assert requests.delete(f"{api}/jobs/{queued}", headers=BOB, timeout=10).status_code == 404
    waiting = {}
    waiter = threading.Thread(target=lambda: waiting.update(response=job(stack, queued, wait=20)))
    waiter.start()
    time.sleep(0.5)
    canceled = requests.delete(f"{api}/jobs/{queued}", headers=ALICE, timeout=10)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled", canceled.text
    assert canceled.json()["finished_at"] and canceled.json()["results"] is None
    waiter.join(5)
    assert waiting["response"].json()["status"] == "canceled"  # ?wait= returns at once: a finished state
    again = requests.delete(f"{api}/jobs/{queued}", headers=ALICE, timeout=10)
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancelable"
    assert "is canceled" in again.json()["error"]["message"]

    # A job the worker has started (marked running) can no longer be canceled.
    running = submit(stack, model="spare", input_text="started").json()["job_id"]
    JobStore(stack["redis"].client(), 60).claim([running])  # as a worker taking it does
    assert requests.delete(f"{api}/jobs/{running}", headers=ALICE, timeout=10).status_code == 409

    # A worker for `spare` receives the canceled job's message, acknowledges it and does not run it.
    worker = start_worker({**stack["env"], "WORKER_MODELS": "spare", "WORKER_METRICS_PORT": str(free_port())},
                          stack["logs"] / "spare.log", models=["spare"])
    try:
        assert job(stack, running, wait=20).json()["status"] == "succeeded"
        wait_until(lambda: f"job {queued} is canceled; skipping" in worker.log_tail(200_000), timeout=30,
                   what="the worker to skip the canceled job")
        queue = requests.get(f"{api}/queue", timeout=10).json()
        assert next(m for m in queue["models"] if m["model"] == "spare")["depth"] == 0
        body = job(stack, queued).json()
        assert body["status"] == "canceled" and body["started_at"] is None and body["results"] is None
    finally:
        worker.stop()
    metrics = requests.get(f"{api}/metrics", timeout=10).text
    assert 'moderation_jobs_canceled_total{model="spare"} 1.0' in metrics


def test_finished_and_unknown_jobs_cannot_be_canceled(stack):
    api = stack["api"].url
    done = submit(stack, wait=10).json()
    assert done["status"] == "succeeded"
    response = requests.delete(f"{api}/jobs/{done['job_id']}", headers=ALICE, timeout=10)
    assert response.status_code == 409 and "is succeeded" in response.json()["error"]["message"]
    assert requests.delete(f"{api}/jobs/{done['job_id']}", timeout=10).status_code == 401
    missing = requests.delete(f"{api}/jobs/4b0a4b55-0a5e-4c56-9d0c-3f6f3c2a2d11", headers=ALICE, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert requests.delete(f"{api}/jobs/not-a-uuid", headers=ALICE, timeout=10).status_code == 404


# --- OpenAI names --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["omni-moderation-latest", "text-moderation-latest", "text-moderation-stable"])
def test_openai_model_names_mean_the_default_model(stack, name):
    response = requests.post(stack["api"].url + "/v1/moderations", json={"input": ["hello", "you idiot"],
                                                                        "model": name}, headers=ALICE, timeout=40)
    assert response.status_code == 200, response.text
    tiny = next(m for m in requests.get(stack["api"].url + "/models", headers=ALICE, timeout=10).json()["models"]
                if m["name"] == "tiny")
    assert response.json()["model"] == tiny["id"] and len(response.json()["results"]) == 2  # the served model's id
    unknown = requests.post(stack["api"].url + "/v1/moderations", json={"input": "x", "model": "gpt-4"},
                            headers=ALICE, timeout=10)
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_model"
