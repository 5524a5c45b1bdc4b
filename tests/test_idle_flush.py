"""No idle wait: a job that reaches an idle worker goes to the model at once.

The batch window here is ten minutes (BATCH_MAX_WAIT_MS=600000) and a batch holds up to 16 texts, so a
worker that waited for either would keep a lone job far past the test's timeouts. Each lone job must
finish, in a forward pass of one text: the window applies only while a batch is in flight.
"""

from __future__ import annotations

import pytest
import requests

from shared import metrics as names
from tests import scrape
from tests.support import base_env, start_api, start_worker, wait_for_job

WINDOW_MS = 600_000


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("idle-flush-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", DEFAULT_MODEL="tiny",
                   BATCH_MAX_TEXTS="16", BATCH_MAX_WAIT_MS=str(WINDOW_MS), CACHE_TTL="0")
    api = start_api(env, logs / "api.log")
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    yield {"api": api.url, "metrics": f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"}
    worker.stop()
    api.stop()


def single_text_passes(stack) -> tuple[float, float]:
    """(forward passes, passes of one text) the worker has run so far."""
    samples = scrape.worker_samples(stack["metrics"])
    return (scrape.metric(samples, names.BATCH_SIZE + "_count", "tiny"),
            scrape.metric(samples, names.BATCH_SIZE + "_bucket", "tiny", le="1.0"))


@pytest.mark.parametrize("n", range(3))
def test_a_lone_job_is_not_held_by_the_batch_window(stack, n):
    passes_before, singles_before = single_text_passes(stack)
    response = requests.post(stack["api"] + "/generate", json={"input_text": f"a lone text {n}", "wait": 30},
                             timeout=60)
    assert response.status_code in (200, 202), response.text
    job = response.json()
    if job.get("status") != "succeeded":
        job = wait_for_job(stack["api"], job["job_id"], timeout=90)  # far below the 10-minute window
    assert job["status"] == "succeeded", job
    passes_after, singles_after = single_text_passes(stack)
    assert (passes_after - passes_before, singles_after - singles_before) == (1, 1)
