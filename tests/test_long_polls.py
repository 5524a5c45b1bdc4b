"""Long polls bounded (api/long_polls.py, docs/long-polls.md) against a real API process and a private Redis.

The API runs one gunicorn process, so every request meets the same counts, with MAX_LONG_POLLS_PER_KEY=2
and MAX_LONG_POLLS=4. No worker runs: jobs stay queued and a wait lasts until the test cancels its job
(a cancel publishes the finished record, which ends the wait at once). Whether a poll is waiting is read
from moderation_long_polls_active on /metrics, never assumed after a sleep.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from shared import metrics as names
from shared.jobs import KEY_PREFIX
from tests import scrape
from tests.support import base_env, start_api, wait_until

PER_KEY, PER_PROCESS = 2, 4
LONG_WAIT = 20  # far longer than any answer the test expects "at once"
AT_ONCE = 5  # seconds: a refused long poll answers well within this
ALICE, BOB, CAROL = ({"Authorization": f"Bearer {name}-key"} for name in ("alice", "bob", "carol"))
HEADER = "X-Long-Poll"


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    env = base_env(redis_server.url, MODELS=f"idle={tiny_multilabel_model}", API_KEYS="alice-key,bob-key,carol-key",
                   MAX_LONG_POLLS=str(PER_PROCESS), MAX_LONG_POLLS_PER_KEY=str(PER_KEY))
    api = start_api(env, tmp_path_factory.mktemp("long-polls-logs") / "api.log", workers=1)
    yield {"api": api.url, "redis": redis_server.client()}
    api.stop()


def submit(stack, headers: dict) -> str:
    response = requests.post(stack["api"] + "/generate", json={"input_text": "hello"}, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def get_job(stack, job_id: str, headers: dict, wait: float = 0) -> requests.Response:
    return requests.get(f"{stack['api']}/jobs/{job_id}", params={"wait": wait}, headers=headers,
                        timeout=wait + 15)


def samples(stack) -> dict:
    return scrape.worker_samples(stack["api"] + "/metrics")


def active(stack) -> float:
    return samples(stack).get((names.LONG_POLLS_ACTIVE, ()), 0.0)


def refused(stack, cap: str) -> float:
    return samples(stack).get((names.LONG_POLLS_REFUSED_TOTAL, (("cap", cap),)), 0.0)


def job_keys(stack) -> set:
    return set(stack["redis"].scan_iter(KEY_PREFIX + "*"))


class Poll:
    """GET /jobs/<id>?wait=LONG_WAIT in a thread, on a fresh job of the caller's, until the job is canceled."""

    def __init__(self, stack, headers: dict):
        self.stack, self.headers = stack, headers
        self.job_id = submit(stack, headers)
        self.response: requests.Response | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.response = get_job(self.stack, self.job_id, self.headers, LONG_WAIT)

    def end(self) -> requests.Response:
        """Cancel the job: the wait ends with it."""
        assert requests.delete(f"{self.stack['api']}/jobs/{self.job_id}", headers=self.headers,
                               timeout=10).status_code == 200
        self.thread.join(15)
        assert not self.thread.is_alive() and self.response is not None, "the poll did not end with its job"
        return self.response


def start_polls(stack, callers: list[dict]) -> list[Poll]:
    """Long polls, one per caller listed, each seen waiting (the gauge counts it) before this returns."""
    before = active(stack)
    polls = [Poll(stack, headers) for headers in callers]
    wait_until(lambda: active(stack) == before + len(polls), timeout=15, what=f"{len(polls)} more waiting polls")
    return polls


def end_polls(stack, polls: list[Poll]) -> None:
    for poll in polls:
        response = poll.end()
        assert response.status_code == 200 and response.json()["status"] == "canceled", response.text
        assert HEADER not in response.headers  # it was admitted and waited
    wait_until(lambda: active(stack) == 0, timeout=10, what="no waiting polls")


def timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_metrics_are_exported_from_the_start(stack):
    page = samples(stack)
    assert page[(names.LONG_POLLS_ACTIVE, ())] == 0
    for cap in ("process", "key"):
        assert (names.LONG_POLLS_REFUSED_TOTAL, (("cap", cap),)) in page


def test_a_caller_past_its_cap_is_answered_at_once_and_others_still_wait(stack):
    polls = start_polls(stack, [ALICE, ALICE])
    try:
        refused_before = refused(stack, "key")
        # A third poll of Alice's: the job as it is, at once, marked refused.
        job_id = submit(stack, ALICE)
        response, seconds = timed(lambda: get_job(stack, job_id, ALICE, LONG_WAIT))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "queued" and response.headers[HEADER] == "refused"
        assert seconds < AT_ONCE
        # POST /generate with wait: the 202 at once, the job created and queued.
        response, seconds = timed(lambda: requests.post(stack["api"] + "/generate",
                                                        json={"input_text": "hi", "wait": LONG_WAIT},
                                                        headers=ALICE, timeout=LONG_WAIT + 15))
        assert response.status_code == 202, response.text
        assert response.headers[HEADER] == "refused" and seconds < AT_ONCE
        assert get_job(stack, response.json()["job_id"], ALICE).json()["status"] == "queued"
        assert refused(stack, "key") == refused_before + 2
        # Bob is another caller: he still gets to wait.
        polls += start_polls(stack, [BOB])
        assert active(stack) == 3
    finally:
        end_polls(stack, polls)


def test_moderations_past_the_cap_answer_429_and_create_no_job(stack):
    polls = start_polls(stack, [ALICE, ALICE])
    try:
        keys_before, refused_before = job_keys(stack), refused(stack, "key")
        response, seconds = timed(lambda: requests.post(stack["api"] + "/v1/moderations", json={"input": "hello"},
                                                        headers=ALICE, timeout=LONG_WAIT + 15))
        assert response.status_code == 429, response.text
        assert response.headers["Retry-After"] == "1" and response.headers[HEADER] == "refused"
        assert seconds < AT_ONCE
        error = response.json()["error"]
        assert error["code"] == "too_many_waits" and error["type"] == "rate_limit_error"
        assert job_keys(stack) == keys_before, "a refused /v1/moderations created a job"
        assert refused(stack, "key") == refused_before + 1
    finally:
        end_polls(stack, polls)


def test_the_process_cap_holds_for_every_caller(stack):
    polls = start_polls(stack, [ALICE, ALICE, BOB, BOB])  # PER_PROCESS waits, no caller past its own cap
    try:
        refused_before = refused(stack, "process")
        job_id = submit(stack, CAROL)
        response, seconds = timed(lambda: get_job(stack, job_id, CAROL, LONG_WAIT))
        assert response.status_code == 200 and response.json()["status"] == "queued", response.text
        assert response.headers[HEADER] == "refused" and seconds < AT_ONCE
        response = requests.post(stack["api"] + "/v1/moderations", json={"input": "hello"}, headers=CAROL,
                                 timeout=LONG_WAIT + 15)
        assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_waits", response.text
        assert refused(stack, "process") == refused_before + 2
        # Without a wait nothing is capped.
        assert HEADER not in get_job(stack, job_id, CAROL).headers
    finally:
        end_polls(stack, polls)


def test_waiting_works_again_once_the_polls_end(stack):
    end_polls(stack, start_polls(stack, [ALICE, ALICE]))
    # Alice's places are free again: she waits twice more, and a third is refused as before.
    polls = start_polls(stack, [ALICE, ALICE])
    try:
        response = get_job(stack, submit(stack, ALICE), ALICE, LONG_WAIT)
        assert response.headers[HEADER] == "refused"
    finally:
        end_polls(stack, polls)
    # A long poll that simply runs out frees its place too.
    job_id = submit(stack, ALICE)
    response, seconds = timed(lambda: get_job(stack, job_id, ALICE, 0.5))
    assert response.json()["status"] == "queued" and HEADER not in response.headers and seconds >= 0.4
    assert active(stack) == 0
