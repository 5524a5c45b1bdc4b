"""Micro-batching across jobs, through a real worker: results per job equal the model run on that job alone."""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from shared import metrics as names
from shared.queue_stats import queue_depth
from shared.queues import queue_for_model
from tests import scrape
from tests.celery_control import consumer_paused
from tests.conftest import MULTI_LABELS
from tests.support import base_env, start_api, start_worker, wait_for_job, wait_until
from tests.tiny_models import WORDS
from worker.inference import TextClassifier

MAX_TEXTS = 16  # texts per forward pass: a 300-text job needs at least 19 passes


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("batching-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", DEFAULT_MODEL="tiny",
                   MAX_BATCH_ITEMS="300", BATCH_MAX_TEXTS=str(MAX_TEXTS), BATCH_MAX_WAIT_MS="20", CACHE_TTL="3600")
    api = start_api(env, logs / "api.log")
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    yield {"api": api.url, "metrics": f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics",
           "model": TextClassifier(str(tiny_multilabel_model), device="cpu", threads=1, engine="torch",
                                   quantize="none"),
           "env": env, "worker": worker, "redis": redis_server.client()}
    worker.stop()
    api.stop()


def make_texts(rng: random.Random, count: int) -> list[str]:
    """Distinct texts of varied length (3..30 words), so passes mix lengths and need padding."""
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 30))) + f" {rng.randrange(10**9)}" for _ in range(count)]


def worker_samples(stack) -> dict[tuple[str, tuple], float]:
    return scrape.worker_samples(stack["metrics"])


def metric(samples: dict, name: str, **labels) -> float:
    return scrape.metric(samples, name, "tiny", **labels)


def submit(stack, texts: list[str]) -> dict:
    response = requests.post(stack["api"] + "/generate", json={"inputs": texts, "wait": 30}, timeout=60)
    assert response.status_code in (200, 202), response.text
    body = response.json()
    return body if body.get("status") == "succeeded" else wait_for_job(stack["api"], body["job_id"])


def assert_scores_equal(results: list[dict], expected: list[list[float]]) -> None:
    assert len(results) == len(expected)
    for result, row in zip(results, expected):
        assert list(result["category_scores"]) == MULTI_LABELS
        for label, score in zip(MULTI_LABELS, row):
            assert math.isclose(result["category_scores"][label], score, abs_tol=1e-4), (label, score, result)


def test_concurrent_jobs_of_mixed_sizes_each_get_their_own_results_in_order(stack):
    rng = random.Random(6)
    jobs = [make_texts(rng, rng.randint(1, 40)) for _ in range(60)]
    with ThreadPoolExecutor(max_workers=24) as pool:
        finished = list(pool.map(lambda texts: submit(stack, texts), jobs))
    for texts, job in zip(jobs, finished):
        assert job["status"] == "succeeded", job
        # The reference: this job alone, in one in-process forward pass.
        assert_scores_equal(job["results"], stack["model"].scores(texts))


def test_a_300_text_job_is_split_over_several_passes_and_mapped_back_in_order(stack):
    texts = make_texts(random.Random(300), 300)
    before = worker_samples(stack)
    job = submit(stack, texts)
    after = worker_samples(stack)
    assert job["status"] == "succeeded", job
    assert_scores_equal(job["results"], [stack["model"].scores([text])[0] for text in texts])
    passes = metric(after, names.BATCH_SIZE + "_count") - metric(before, names.BATCH_SIZE + "_count")
    texts_scored = metric(after, names.BATCH_SIZE + "_sum") - metric(before, names.BATCH_SIZE + "_sum")
    assert passes >= math.ceil(300 / MAX_TEXTS) and texts_scored == 300


def test_a_repeated_text_is_answered_from_the_cache_with_the_same_scores(stack):
    texts = make_texts(random.Random(42), 5)
    first = submit(stack, texts)
    before = worker_samples(stack)
    second = submit(stack, texts)
    after = worker_samples(stack)
    assert first["status"] == second["status"] == "succeeded"
    assert second["results"] == first["results"]
    hits = metric(after, names.CACHE_HITS_TOTAL) - metric(before, names.CACHE_HITS_TOTAL)
    assert hits == len(texts)
    # Answered without inference: no forward pass ran for the second job.
    assert metric(after, names.BATCH_SIZE + "_count") == metric(before, names.BATCH_SIZE + "_count")


def test_jobs_arriving_together_share_forward_passes(stack):
    """A real backlog, not jobs that happen to arrive within BATCH_MAX_WAIT_MS of each other: the worker
    stops consuming the queue (Celery's cancel_consumer), all jobs are enqueued, and it starts again."""
    texts = make_texts(random.Random(7), 64)
    queue = queue_for_model("tiny")
    before = worker_samples(stack)
    with consumer_paused(stack["env"], stack["worker"].nodename, queue):
        with requests.Session() as session:
            ids = [session.post(stack["api"] + "/generate", json={"input_text": text}, timeout=10).json()["job_id"]
                   for text in texts]
        wait_until(lambda: queue_depth(stack["redis"], queue) == len(texts), timeout=30,
                   what="every job to wait in the queue")
    with ThreadPoolExecutor(max_workers=16) as pool:
        finished = list(pool.map(lambda job_id: wait_for_job(stack["api"], job_id), ids))
    after = worker_samples(stack)
    assert all(job["status"] == "succeeded" for job in finished)
    passes = metric(after, names.BATCH_SIZE + "_count") - metric(before, names.BATCH_SIZE + "_count")
    single_text_passes = (metric(after, names.BATCH_SIZE + "_bucket", le="1.0")
                          - metric(before, names.BATCH_SIZE + "_bucket", le="1.0"))
    assert passes < len(texts), "every job ran in a forward pass of its own"
    assert passes - single_text_passes >= 1  # at least one pass held more than one text
