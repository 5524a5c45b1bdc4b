"""Idempotency-Key on POST /generate and POST /v1/moderations (api/idempotency.py, docs/idempotency.md), the
client's retries under one key, and the client's pacing from x-ratelimit-* headers.

A live stack: gunicorn API, private Redis, `python -m worker` with a tiny model; a second API with API keys
on the same Redis and worker; a third on its own Redis database with MAX_QUEUE_DEPTH=1 and no worker (a
submission it refuses must release its key). Jobs are counted as the records in Redis, so "one job" means
one record was written. Pacing is tested against a small local HTTP server that sends the headers.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
import requests

from client import ModerationClient, RateLimitedError
from client.client import parse_duration, rate_limits_from_headers
from shared.jobs import KEY_PREFIX, is_job_id
from shared.queues import broker_lists, queue_for_model
from tests.support import base_env, start_api, start_worker, wait_for_job

KEYS = ("alice-key", "bob-key")
REPLAYED = "Idempotent-Replayed"
RESERVATIONS = "moderation:idempotency:*"
PACED_LIMIT = 3


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("idempotency-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", DEFAULT_MODEL="tiny",
                   BATCH_MAX_WAIT_MS="10", MODERATIONS_TIMEOUT="30")
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    api = start_api(env, logs / "api.log")
    keyed = start_api({**env, "API_KEYS": ",".join(KEYS)}, logs / "api-keyed.log", workers=1)
    # Its own Redis database, where no worker listens: the queue is full at one job.
    full_url = redis_server.url.rsplit("/", 1)[0] + "/5"
    full = start_api({**env, "REDIS_URL": full_url, "MAX_QUEUE_DEPTH": "1"}, logs / "api-full.log", workers=1)
    # A tight submission budget, announced in the x-ratelimit-* headers the client paces itself by.
    paced = start_api({**env, "RATE_LIMITER": f"{PACED_LIMIT}/2second"}, logs / "api-paced.log")
    yield {"api": api, "keyed": keyed, "full": full, "paced": paced, "redis": redis.Redis.from_url(redis_server.url),
           "full_redis": redis.Redis.from_url(full_url)}
    for proc in (paced, full, keyed, api, worker):
        proc.stop()


def job_count(client: redis.Redis) -> int:
    """Job records in a Redis database: every accepted job writes exactly one."""
    return sum(1 for key in client.scan_iter(KEY_PREFIX + "*", count=1000)
               if is_job_id(key.decode().removeprefix(KEY_PREFIX)))


def post(url: str, path: str, body: dict, key: str | None, headers: dict | None = None) -> requests.Response:
    headers = {**(headers or {}), **({"Idempotency-Key": key} if key is not None else {})}
    return requests.post(url + path, json=body, headers=headers, timeout=40)


# -- the API ----------------------------------------------------------------------------------------

def test_the_same_key_and_body_twice_is_one_job_replayed(stack):
    url, before = stack["api"].url, job_count(stack["redis"])
    key, body = str(uuid.uuid4()), {"inputs": ["i love my new puppy", "you are an idiot"]}
    first = post(url, "/generate", body, key)
    assert first.status_code == 202, first.text
    assert REPLAYED not in first.headers
    second = post(url, "/generate", body, key)
    assert second.status_code == 202, second.text
    assert second.headers[REPLAYED] == "true"
    assert second.json() == first.json() and second.headers["Location"] == first.headers["Location"]
    assert job_count(stack["redis"]) == before + 1
    done = wait_for_job(url, first.json()["job_id"])
    assert done["status"] == "succeeded" and len(done["results"]) == 2
    # After it finished, the replay is still the original 202 (no `wait`), and still no new job.
    third = post(url, "/generate", body, key)
    assert third.status_code == 202 and third.json() == first.json() and third.headers[REPLAYED] == "true"
    assert job_count(stack["redis"]) == before + 1
    # The reservation lives 24 h, under the key's hash (the raw key is not stored as a name).
    (reservation,) = [k for k in stack["redis"].scan_iter(RESERVATIONS) if
                      json.loads(stack["redis"].get(k))["job_id"] == first.json()["job_id"]]
    assert key.encode() not in reservation
    assert 24 * 3600 - 120 < stack["redis"].ttl(reservation) <= 24 * 3600


def test_a_replay_with_wait_answers_the_finished_job(stack):
    url, before = stack["api"].url, job_count(stack["redis"])
    key, body = str(uuid.uuid4()), {"input_text": "we should kill all martians", "wait": 20}
    first = post(url, "/generate", body, key)
    assert first.status_code == 200, first.text  # finished within wait: the whole job
    second = post(url, "/generate", body, key)
    assert second.status_code == 200 and second.headers[REPLAYED] == "true"
    assert second.json() == first.json()
    assert job_count(stack["redis"]) == before + 1


def test_the_same_key_with_another_body_or_endpoint_is_422(stack):
    url, before = stack["api"].url, job_count(stack["redis"])
    key = str(uuid.uuid4())
    assert post(url, "/generate", {"input_text": "hello there"}, key).status_code == 202
    for path, body in (("/generate", {"input_text": "hello there!"}),
                       ("/generate", {"input_text": "hello there", "model": "tiny"}),
                       ("/v1/moderations", {"input": "hello there"})):
        reused = post(url, path, body, key)
        assert reused.status_code == 422, (path, body, reused.text)
        assert reused.json()["error"] == {
            "code": "idempotency_key_reused", "type": "invalid_request_error", "param": "Idempotency-Key",
            "message": reused.json()["error"]["message"]}
        assert key in reused.json()["error"]["message"]
    # Key order and spacing in the JSON do not make it another body.
    same = requests.post(url + "/generate", data='{ "input_text" : "hello there" }',
                         headers={"Content-Type": "application/json", "Idempotency-Key": key}, timeout=10)
    assert same.status_code == 202 and same.headers[REPLAYED] == "true"
    assert job_count(stack["redis"]) == before + 1


def test_v1_moderations_replays_the_same_id_and_results(stack):
    url, before = stack["api"].url, job_count(stack["redis"])
    key, body = str(uuid.uuid4()), {"input": ["you are an idiot", "nice puppy"]}
    first = post(url, "/v1/moderations", body, key)
    assert first.status_code == 200, first.text
    assert first.json()["id"].startswith("modr-") and REPLAYED not in first.headers
    second = post(url, "/v1/moderations", body, key)
    assert second.status_code == 200 and second.headers[REPLAYED] == "true"
    assert second.json() == first.json()
    assert job_count(stack["redis"]) == before + 1
    # Without a key, nothing changes: each call is a new job.
    assert post(url, "/v1/moderations", body, None).json()["id"] != first.json()["id"]
    assert job_count(stack["redis"]) == before + 2


def test_keys_are_scoped_to_each_api_key(stack):
    url, before = stack["keyed"].url, job_count(stack["redis"])
    key, body = "order-1234", {"input_text": "hello from two customers"}
    alice = {"Authorization": f"Bearer {KEYS[0]}"}
    bob = {"Authorization": f"Bearer {KEYS[1]}"}
    first_a = post(url, "/generate", body, key, alice)
    first_b = post(url, "/generate", body, key, bob)
    assert first_a.status_code == first_b.status_code == 202, (first_a.text, first_b.text)
    assert first_a.json()["job_id"] != first_b.json()["job_id"]
    assert REPLAYED not in first_b.headers
    again_a = post(url, "/generate", body, key, alice)
    assert again_a.headers[REPLAYED] == "true" and again_a.json()["job_id"] == first_a.json()["job_id"]
    # Bob's key with another body is his own conflict, not Alice's.
    assert post(url, "/generate", {"input_text": "bob's other text"}, key, bob).status_code == 422
    assert post(url, "/generate", body, key).status_code == 401  # no API key: refused before any key is read
    assert job_count(stack["redis"]) == before + 2


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\xe9", "tab\tinside"])
def test_malformed_keys_are_400(stack, key):
    before = job_count(stack["redis"])
    refused = requests.post(stack["api"].url + "/generate", json={"input_text": "hello"},
                            headers={"Idempotency-Key": key.encode("latin-1")}, timeout=10)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_request" and error["param"] == "Idempotency-Key"
    assert job_count(stack["redis"]) == before


def test_the_longest_and_oddest_valid_keys_are_accepted(stack):
    for key in ("k" * 255, "~!@#$%^&*() a key with spaces {}[]|\\:;'<>,.?/"):
        first = post(stack["api"].url, "/generate", {"input_text": "edge keys"}, key)
        second = post(stack["api"].url, "/generate", {"input_text": "edge keys"}, key)
        assert first.status_code == second.status_code == 202, first.text
        assert second.json()["job_id"] == first.json()["job_id"] and second.headers[REPLAYED] == "true"


def test_a_refused_submission_releases_its_key(stack):
    url, queue = stack["full"].url, stack["full_redis"]
    queue.flushdb()
    assert post(url, "/generate", {"input_text": "fills the queue"}, None).status_code == 202
    key, body = str(uuid.uuid4()), {"input_text": "refused, then accepted"}
    full = post(url, "/generate", body, key)
    assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full", full.text
    assert list(queue.scan_iter(RESERVATIONS)) == []  # released: a retry may go through
    assert job_count(queue) == 1
    queue.delete(*broker_lists(queue_for_model("tiny")))  # the queue drains, as a worker would
    started = time.monotonic()
    retried = post(url, "/generate", body, key)
    assert retried.status_code == 202 and REPLAYED not in retried.headers, retried.text
    assert time.monotonic() - started < 5  # not a take-over of an abandoned reservation
    replayed = post(url, "/generate", body, key)
    assert replayed.headers[REPLAYED] == "true" and replayed.json()["job_id"] == retried.json()["job_id"]
    assert job_count(queue) == 2
    queue.flushdb()


def test_openapi_documents_the_header_and_the_422(stack):
    document = requests.get(stack["api"].url + "/openapi.json", timeout=10).json()
    for path in ("/generate", "/v1/moderations"):
        operation = document["paths"][path]["post"]
        (header,) = [p for p in operation["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key" and header["required"] is False
        assert header["schema"]["maxLength"] == 255
        assert "422" in operation["responses"]


# -- the client: one key per submission, also across a dropped connection ----------------------------

class DropFirstResponses:
    """127.0.0.1:<port> forwarded to the API, except that on the first `drops` connections the API's answer
    is thrown away and the connection cut as soon as it starts arriving (so the request was handled)."""

    def __init__(self, target_port: int, drops: int = 1):
        self.target_port, self.drops, self.dropped = target_port, drops, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
        with self._lock:
            drop = self.dropped < self.drops
            self.dropped += drop
        threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if drop:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    @staticmethod
    def _forward(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_a_client_retry_after_a_dropped_answer_is_still_one_job(stack):
    proxy = DropFirstResponses(stack["api"].port)
    before = job_count(stack["redis"])
    try:
        with ModerationClient(f"http://127.0.0.1:{proxy.port}", timeout=20, max_retries=3) as client:
            job = client.submit(["answer lost on the way back"])
            assert proxy.dropped >= 1 and client.retries == 1  # the first answer was cut, then retried
    finally:
        proxy.close()
    assert job_count(stack["redis"]) == before + 1
    assert wait_for_job(stack["api"].url, job.job_id)["status"] == "succeeded"


def test_without_a_key_a_retried_post_would_have_made_two_jobs(stack):
    """The control for the test above: the same cut answer, a raw POST retried without a key, two jobs."""
    proxy = DropFirstResponses(stack["api"].port)
    before = job_count(stack["redis"])
    try:
        url = f"http://127.0.0.1:{proxy.port}/generate"
        with pytest.raises(requests.ConnectionError):
            requests.post(url, json={"input_text": "sent twice"}, timeout=20)
        assert requests.post(url, json={"input_text": "sent twice"}, timeout=20).status_code == 202
    finally:
        proxy.close()
    assert job_count(stack["redis"]) == before + 2


# -- the client's pacing from x-ratelimit-* headers ---------------------------------------------------

def test_openai_reset_durations_parse():
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration("1s") == 1.0 and parse_duration("1.5s") == 1.5
    assert parse_duration("6m0s") == 360.0 and parse_duration("1h2m3s") == 3723.0
    assert parse_duration("2m30.5s") == pytest.approx(150.5) and parse_duration("0s") == 0.0
    assert parse_duration("20us") == pytest.approx(2e-5) and parse_duration("3") == 3.0
    for bad in (None, "", "soon", "1x", "s", "1s2", "-1s", "1 s"):
        assert parse_duration(bad) is None, bad


def test_rate_limits_are_read_from_the_headers():
    import httpx
    headers = httpx.Headers({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "1.5s", "x-ratelimit-limit-tokens": "150000",
                             "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6m0s"})
    limits = rate_limits_from_headers(headers, now=100.0)
    assert (limits.limit_requests, limits.remaining_requests, limits.reset_requests) == (60, 0, 1.5)
    assert (limits.limit_tokens, limits.remaining_tokens, limits.reset_tokens) == (150000, 149984, 360.0)
    assert limits.pause(100.5) == (pytest.approx(1.0), "requests")
    assert limits.pause(102.0) == (0.0, "")
    assert rate_limits_from_headers(httpx.Headers({"X-RateLimit-Remaining": "0"})) is None  # flask-limiter's


class PacedServer:
    """A stand-in for the API on 127.0.0.1: POST /generate answers 202 with the x-ratelimit-* headers the
    test scripts (one dict per submission, the last repeated; a `status` entry answers that instead), and
    records when each submission arrived and its Idempotency-Key; GET /jobs/<id> answers it finished."""

    def __init__(self, script: list[dict]):
        self.script, self.arrivals = script, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict, headers: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                step = server.script[min(len(server.arrivals), len(server.script) - 1)]
                server.arrivals.append((time.monotonic(), self.headers.get("Idempotency-Key")))
                headers = {k: v for k, v in step.items() if k != "status"}
                if step.get("status"):
                    self._answer(step["status"], {"error": {"code": "queue_full", "message": "full",
                                                            "type": "server_error", "param": None}}, headers)
                    return
                texts = body.get("inputs") or [body.get("input_text")]
                job = {"job_id": str(uuid.uuid4()), "status": "succeeded" if body.get("wait") else "queued",
                       "model": "tiny",
                       "status_url": "/jobs/x", "results": [
                           {"flagged": False, "categories": {"hate": False}, "category_scores": {"hate": 0.1}}
                           for _ in texts]}
                self._answer(200 if body.get("wait") else 202, job, headers)

            def do_GET(self):
                self._answer(404, {"error": {"code": "not_found", "message": "no", "type": "invalid_request_error",
                                             "param": None}}, {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gaps(self) -> list[float]:
        return [b[0] - a[0] for a, b in zip(self.arrivals, self.arrivals[1:])]

    def __enter__(self) -> PacedServer:
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def budget(requests_left: int | None = None, reset_requests: str = "1.2s", tokens_left: int | None = None,
           reset_tokens: str = "800ms") -> dict:
    headers = {}
    if requests_left is not None:
        headers |= {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": str(requests_left),
                    "x-ratelimit-reset-requests": reset_requests}
    if tokens_left is not None:
        headers |= {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": str(tokens_left),
                    "x-ratelimit-reset-tokens": reset_tokens}
    return headers


def test_the_client_waits_for_the_reset_of_a_spent_budget():
    script = [budget(1, tokens_left=900), budget(0, tokens_left=800), budget(2, tokens_left=0),
              budget(2, tokens_left=5)]
    pauses = []
    with PacedServer(script) as server, ModerationClient(server.url, on_pause=lambda s, b: pauses.append((s, b))) \
            as client:
        for i in range(4):
            assert client.submit([f"text {i}"]).status == "queued"
        gaps = server.gaps()
        assert gaps[0] < 0.5  # one request left: no pause
        assert 1.1 <= gaps[1] < 3  # no requests left, reset 1.2 s: waited for it rather than being refused
        assert 0.7 <= gaps[2] < 2.5  # no tokens left, reset 800 ms
        assert [budget_name for _, budget_name in pauses] == ["requests", "tokens"] and client.pauses == 2
        assert pauses[0][0] == pytest.approx(1.2, abs=0.2) and pauses[1][0] == pytest.approx(0.8, abs=0.2)
        assert client.rate_limits.remaining_requests == 2 and client.rate_limits.remaining_tokens == 5
        assert client.rate_limits.limit_tokens == 1000
        assert len({key for _, key in server.arrivals}) == 4  # a fresh Idempotency-Key per submission


def test_the_pause_is_capped_and_absent_headers_mean_no_pacing():
    with PacedServer([budget(0, reset_requests="1h0m0s"), {}]) as server, \
            ModerationClient(server.url, max_retry_wait=0.5) as client:
        client.submit(["a"])
        client.submit(["b"])  # waits at most max_retry_wait, not an hour
        assert 0.4 <= server.gaps()[0] < 2 and client.pauses == 1
    with PacedServer([{}]) as server, ModerationClient(server.url) as client:
        for i in range(3):
            client.submit([f"text {i}"])
        assert client.rate_limits is None and client.pauses == 0 and max(server.gaps()) < 0.5


def test_retries_of_one_submission_reuse_its_key():
    script = [{"status": 503, "Retry-After": "0"}, {"status": 429, "Retry-After": "0"}, {}, {}]
    with PacedServer(script) as server, ModerationClient(server.url) as client:
        client.submit(["retried twice"])
        client.submit(["another submission"])
        keys = [key for _, key in server.arrivals]
    assert client.retries == 2 and len(keys) == 4
    assert keys[0] == keys[1] == keys[2] != keys[3] and all(keys)


def test_the_client_waits_for_the_apis_request_budget_instead_of_being_refused(stack):
    url = stack["paced"].url
    probe = requests.post(url + "/generate", json={"input_text": "probe"}, timeout=10)
    assert probe.status_code == 202 and probe.headers["x-ratelimit-limit-requests"] == str(PACED_LIMIT)
    assert probe.headers["x-ratelimit-remaining-requests"] == str(PACED_LIMIT - 1)
    assert parse_duration(probe.headers["x-ratelimit-reset-requests"]) is not None
    notes = []
    with ModerationClient(url, timeout=20, on_pause=lambda seconds, budget: notes.append(budget)) as client:
        started = time.monotonic()
        jobs = [client.submit([f"paced {i}"]) for i in range(7)]  # 8 submissions against 3 per 2 s
        elapsed = time.monotonic() - started
    assert client.retries == 0  # never refused: it waited for the reset instead
    assert client.pauses >= 2 and "requests" in notes and elapsed >= 1.5
    assert client.rate_limits.limit_requests == PACED_LIMIT and len({job.job_id for job in jobs}) == 7
    # The control: the same budget without pacing (nor retries) is refused.
    with ModerationClient(url, max_retries=0, pace=False) as eager, pytest.raises(RateLimitedError):
        for i in range(PACED_LIMIT + 1):
            eager.submit([f"eager {i}"])


def test_the_cli_says_when_it_pauses(tmp_path, capsys):
    from client.cli import main
    source = tmp_path / "rows.txt"
    source.write_text("one\ntwo\nthree\n")
    with PacedServer([budget(1), budget(0, reset_requests="500ms"), budget(5)]) as server:
        status = main(["--url", server.url, "moderate", str(source), "-o", str(tmp_path / "out.jsonl"),
                       "--batch-size", "1", "--concurrency", "1", "--no-progress"])
    assert status == 0
    assert "rate limit reached (no requests left); pausing 0." in capsys.readouterr().err
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
