"""The token budget at the door (api/tokens.py) and tokens per minute per key (api/limits.py), against live
gunicorn APIs on a private Redis. No worker: accepted jobs stay queued, which is all these tests need.

The tiny model's tokenizer (tests/tiny_models.py) reads each punctuation character as one token, as the
bundled model's does, so `"!" * n`-style texts hold exactly n tokens.
"""

from __future__ import annotations

import random

import pytest
import redis
import requests

from shared import metrics as names
from tests import scrape
from tests.support import base_env, start_api

PUNCTUATION = "!#$%&()*+,-./:;<=>?@[]^_{|}~"  # no quote or backslash: one byte each in JSON too
MAX_TEXT, MAX_REQUEST, TOKENS_PER_MINUTE = 40, 100, 250
KEYS = ("alpha-key", "beta-key")


def tokens(count: int, seed: int = 0) -> str:
    """A text of exactly `count` tokens (distinct per seed)."""
    rng = random.Random(seed)
    return "".join(rng.choice(PUNCTUATION) for _ in range(count))


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def limited_api(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", API_KEYS=",".join(KEYS),
                   MAX_TEXT_TOKENS=str(MAX_TEXT), MAX_REQUEST_TOKENS=str(MAX_REQUEST),
                   TOKEN_RATE_LIMITER=f"{TOKENS_PER_MINUTE}/minute", RATE_LIMITER="100/minute",
                   RATE_LIMIT_STORAGE_URL=redis_server.url.rsplit("/", 1)[0] + "/5")
    api = start_api(env, tmp_path_factory.mktemp("token-api") / "api.log", workers=2)
    yield api
    api.stop()


@pytest.fixture(scope="module")
def default_api(redis_server, tiny_multilabel_model, tmp_path_factory):
    """The defaults (MAX_REQUEST_TOKENS, MAX_TEXT_TOKENS, TOKEN_RATE_LIMITER) as a new user runs them."""
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}",
                   RATE_LIMIT_STORAGE_URL=redis_server.url.rsplit("/", 1)[0] + "/6")
    for name in ("TOKEN_RATE_LIMITER", "RATE_LIMITER", "READ_RATE_LIMITER"):
        env.pop(name)
    api = start_api(env, tmp_path_factory.mktemp("default-api") / "api.log", workers=1)
    yield api
    api.stop()


@pytest.fixture(autouse=True)
def empty_limits(redis_server):
    for db in (5, 6):
        redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{db}").flushdb()


def api_metrics(api) -> dict:
    return scrape.worker_samples(api.url + "/metrics")


def post(api, path: str, body: dict, key: str = KEYS[0]) -> requests.Response:
    return requests.post(api.url + path, json=body, headers=bearer(key), timeout=30)


def test_the_issues_two_maximal_bodies_are_refused_at_the_door_by_default(default_api):
    """Issue 26: 256 texts of ~4,000 one-character tokens, just under the 1 MiB body limit, were accepted
    and held the worker 195 s. With the default budget both are refused before anything is queued."""
    body = {"inputs": [tokens(4000, seed) for seed in range(256)]}
    assert len(requests.models.complexjson.dumps(body)) < 1024 * 1024
    before = api_metrics(default_api)
    for _ in range(2):
        response = requests.post(default_api.url + "/generate", json=body, timeout=60)
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        # Each text alone is within the default MAX_TEXT_TOKENS (8192): the request as a whole is not. The
        # API stops counting once past the budget, so the count it names is a lower bound.
        assert error["code"] == "request_too_large" and error["limit"] == 32768
        assert 32768 < error["tokens"] < 2 * 32768
        assert f"at least {error['tokens']} tokens" in error["message"]
        assert "MAX_REQUEST_TOKENS=32768" in error["message"]
    after = api_metrics(default_api)
    assert scrape.metric(after, names.JOBS_SUBMITTED_TOTAL, "tiny") == scrape.metric(before, names.JOBS_SUBMITTED_TOTAL,
                                                                                      "tiny")
    too_large = {"outcome": "too_large", "key_class": "anonymous"}
    refused = scrape.metric(after, names.TOKENS_TOTAL, "tiny", **too_large) \
        - scrape.metric(before, names.TOKENS_TOTAL, "tiny", **too_large)
    assert 2 * 32768 < refused < 4 * 32768  # what was counted before refusing
    # The largest request the defaults accept: 32768 tokens, each text within 8192.
    largest = {"inputs": [tokens(8192, seed) for seed in range(4)]}
    assert requests.post(default_api.url + "/generate", json=largest, timeout=60).status_code == 202


def test_a_request_past_max_request_tokens_is_413_naming_count_and_limit(limited_api):
    fits = post(limited_api, "/generate", {"inputs": [tokens(MAX_TEXT, 1), tokens(MAX_TEXT, 2), tokens(20, 3)]})
    assert fits.status_code == 202, fits.text
    over = post(limited_api, "/generate", {"inputs": [tokens(MAX_TEXT, 4), tokens(MAX_TEXT, 5), tokens(21, 6)]})
    assert over.status_code == 413
    error = over.json()["error"]
    assert error == {"code": "request_too_large", "type": "invalid_request_error", "param": "inputs",
                     "message": error["message"], "tokens": MAX_REQUEST + 1, "limit": MAX_REQUEST}
    assert f"{MAX_REQUEST + 1} tokens" in error["message"] and f"MAX_REQUEST_TOKENS={MAX_REQUEST}" in error["message"]


def test_a_text_past_max_text_tokens_is_413_naming_the_text(limited_api):
    over = post(limited_api, "/generate", {"inputs": ["fine", tokens(MAX_TEXT + 1)]})
    assert over.status_code == 413
    error = over.json()["error"]
    assert (error["code"], error["param"], error["tokens"], error["limit"]) == \
        ("text_too_long", "inputs[1]", MAX_TEXT + 1, MAX_TEXT)
    single = post(limited_api, "/generate", {"input_text": tokens(MAX_TEXT + 5)})
    assert (single.status_code, single.json()["error"]["param"]) == (413, "input_text")


def test_openai_endpoint_refuses_in_openais_error_shape(limited_api):
    response = post(limited_api, "/v1/moderations", {"input": [tokens(MAX_TEXT, seed) for seed in range(3)]})
    assert response.status_code == 413
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert error["type"] == "invalid_request_error" and error["code"] == "request_too_large"
    assert error["param"] == "input"


def test_tokens_per_minute_per_key_429_while_another_key_is_served(limited_api):
    remaining = []
    for seed in range(3):  # 3 x 80 = 240 of 250
        response = post(limited_api, "/generate", {"inputs": [tokens(40, seed), tokens(40, seed + 10)]})
        assert response.status_code == 202, response.text
        assert response.headers["x-ratelimit-limit-tokens"] == str(TOKENS_PER_MINUTE)
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        remaining.append((int(response.headers["x-ratelimit-remaining-tokens"]),
                          int(response.headers["x-ratelimit-remaining-requests"])))
        assert response.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert [tokens_left for tokens_left, _ in remaining] == [170, 90, 10]
    assert [requests_left for _, requests_left in remaining] == [99, 98, 97]
    refused = post(limited_api, "/generate", {"inputs": [tokens(40, 99)]})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "tokens_rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) == 10  # nothing spent by the refusal
    small = post(limited_api, "/generate", {"input_text": tokens(10, 98)})  # what is left still fits
    assert small.status_code == 202 and small.headers["x-ratelimit-remaining-tokens"] == "0"
    other = post(limited_api, "/generate", {"inputs": [tokens(40, 97)]}, key=KEYS[1])
    assert other.status_code == 202, other.text
    assert other.headers["x-ratelimit-remaining-tokens"] == str(TOKENS_PER_MINUTE - 40)
    # Reads carry the headers too, and spend no tokens.
    job = requests.get(f"{limited_api.url}/jobs/{other.json()['job_id']}", headers=bearer(KEYS[1]), timeout=10)
    assert job.status_code == 200 and job.headers["x-ratelimit-remaining-tokens"] == str(TOKENS_PER_MINUTE - 40)
    metrics = api_metrics(limited_api)
    assert scrape.metric(metrics, names.TOKENS_TOTAL, "tiny", key_class="key", outcome="rate_limited") >= 40
    assert scrape.metric(metrics, names.TOKENS_TOTAL, "tiny", key_class="key", outcome="accepted") >= 240 + 10 + 40
