"""Fair service (worker/slices.py), the job deadline and texts stored once, with a real worker on Redis.

The worker reads at most SLICE_TOKENS=64 tokens per batch here (about one window of the tiny model), so
a job of long texts takes hundreds of slices, each followed by a trip to the back of its queue.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from shared import metrics as names
from shared.jobs import job_key
from shared.queue_stats import queue_depth
from shared.queues import queue_for_model
from tests import scrape
from tests.celery_control import consumer_paused
from tests.support import base_env, start_api, start_worker, wait_for_job, wait_until
from tests.tiny_models import WORDS

SLICE_TOKENS = 64
SLOW_TIMEOUT = 1.0


def long_text(index: int, words: int = 150) -> str:
    """A text of `words` tokens the tiny model knows, in sentences, distinct per index."""
    chosen = [WORDS[(index * 7 + i * 3) % len(WORDS)] for i in range(words)]
    return " ".join(word + ("." if i % 12 == 11 else "") for i, word in enumerate(chosen))


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("fair")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model},slow={tiny_multilabel_model}",
                   SLICE_TOKENS=str(SLICE_TOKENS), CACHE_TTL="0", JOB_TIMEOUT=f"600,slow={SLOW_TIMEOUT}")
    worker = start_worker(env, logs / "worker.log")
    api = start_api(env, logs / "api.log", workers=1)
    yield env, api, worker
    api.stop()
    worker.stop()


def submit(api, texts: list[str], model: str = "tiny") -> str:
    response = requests.post(api.url + "/generate", json={"inputs": texts, "model": model}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_one_text_jobs_are_served_between_the_slices_of_a_large_job(stack, tiny_multilabel_model):
    env, api, worker = stack
    client = requests.Session()
    texts = [long_text(i) for i in range(40)]
    bulk = submit(api, texts)
    wait_until(lambda: stack_slices(env, bulk) >= 1, timeout=60, what="the large job's first slice")
    light_finished = []
    for i in range(5):
        response = client.post(api.url + "/generate", json={"input_text": f"you idiot {i}", "model": "tiny",
                                                            "wait": 30}, timeout=60)
        assert response.status_code == 200, response.text
        light_finished.append(response.json()["finished_at"])
    job = wait_for_job(api.url, bulk, timeout=300)
    assert job["status"] == "succeeded", job
    # Every one-text job sent while the large one ran finished before it.
    assert all(finished < job["finished_at"] for finished in light_finished), (light_finished, job["finished_at"])
    # Scores read slice by slice are those of the whole text read at once.
    from worker.inference import TextClassifier
    classifier = TextClassifier(str(tiny_multilabel_model), "cpu", "none", 1, "torch")
    for got, expected in zip(job["results"], classifier.score_many(texts, 32, 4096)):
        assert list(got["category_scores"].values()) == pytest.approx(expected, abs=1e-5)
    samples = scrape.worker_samples(f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics")
    assert scrape.metric(samples, names.JOB_LATENCY_SECONDS + "_count", "tiny", size="bulk") >= 1
    assert scrape.metric(samples, names.JOB_LATENCY_SECONDS + "_count", "tiny", size="light") >= 5
    # The large job took many slices (a histogram: its sum is the slices of all jobs, each light job one).
    assert scrape.metric(samples, names.JOB_SLICES + "_sum", "tiny") > 5 + 40


def stack_slices(env, job_id: str) -> int:
    import redis
    return int(redis.Redis.from_url(env["REDIS_URL"]).hget(job_key(job_id), "slices") or 0)


def test_a_large_job_can_be_canceled_between_its_slices(stack):
    env, api, _ = stack
    job_id = submit(api, [long_text(i + 100) for i in range(40)])
    wait_until(lambda: stack_slices(env, job_id) >= 2, timeout=60, what="two slices")

    def cancel() -> bool:  # between two slices the job is queued again; while a slice runs, 409
        response = requests.delete(f"{api.url}/jobs/{job_id}", timeout=10)
        assert response.status_code in (200, 409), response.text
        return response.status_code == 200
    wait_until(cancel, timeout=60, what="a moment between slices")
    assert requests.get(f"{api.url}/jobs/{job_id}", timeout=10).json()["status"] == "canceled"


def test_the_message_carries_the_job_id_and_the_record_the_only_copy_of_the_texts(stack):
    env, api, worker = stack
    import redis
    client = redis.Redis.from_url(env["REDIS_URL"])
    queue = queue_for_model("slow")
    texts = [long_text(i + 200, 400) for i in range(8)]
    with consumer_paused(env, worker.nodename, queue):
        job_id = submit(api, texts, model="slow")
        wait_until(lambda: queue_depth(client, queue) == 1, timeout=30, what="the message in the queue")
        message = json.loads(client.lindex(queue, 0))
        body = json.loads(__import__("base64").b64decode(message["body"]))
        assert body[0] == [job_id, "slow"]
        text_bytes = sum(len(text.encode()) for text in texts)
        stored = client.memory_usage(job_key(job_id), samples=0) + len(client.lindex(queue, 0))  # every field
        assert stored <= 1.2 * text_bytes + 2048, (stored, text_bytes)
        # Past the slow model's JOB_TIMEOUT while it waits in the queue.
        wait_until(lambda: time.time() - float(client.hget(job_key(job_id), "enqueued_ts")) > SLOW_TIMEOUT,
                   timeout=10, what="the deadline to pass")
    job = wait_for_job(api.url, job_id, timeout=60)
    assert job["status"] == "failed" and job["error"].startswith("job_timeout: "), job
    assert f"JOB_TIMEOUT={SLOW_TIMEOUT:g}s" in job["error"]
