"""OpenAI's own Python SDK (`openai`, pinned in requirements/dev.txt) as a client of /v1/moderations.

A live stack: a private Redis, one worker serving two known-score models (tests/tiny_models.py), and two
gunicorn APIs on it: `api` (API keys on, no rate limit) and `strict` (RATE_LIMITER 1 per 5 s per key and
MAX_QUEUE_DEPTH=1), for the SDK's 429 and 503 exceptions. Models: "known" (hate, harassment, violence;
the default), "single" (OK, toxic, insult: labels OpenAI does not have) and "idle" (no worker serves it,
so its jobs stay queued and fill its queue).
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path

import openai
import pytest
import requests

from api.schemas import OPENAI_CATEGORIES
from tests.conftest import KNOWN_MULTI
from tests.support import base_env, start_api, start_worker

KEY = "sdk-key"
LIMITED_KEY, QUEUE_KEY = "limit-key", "queue-key"  # each key has its own budget on `strict`
TEXTS = ["I love my new puppy", "you are an idiot", "we should kill them all"]
IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.fixture(scope="module")
def stack(redis_server, known_multilabel_model, known_singlelabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("openai-sdk-logs")
    env = base_env(redis_server.url, API_KEYS=KEY, MODELS=f"known={known_multilabel_model},"
                   f"single={known_singlelabel_model},idle={known_multilabel_model}")
    worker = start_worker({**env, "WORKER_MODELS": "known,single"}, logs / "worker.log", models=["known", "single"])
    api = start_api(env, logs / "api.log")
    strict = start_api({**env, "API_KEYS": f"{LIMITED_KEY},{QUEUE_KEY}", "RATE_LIMITER": "1/5 seconds",
                        "MAX_QUEUE_DEPTH": "1"}, logs / "strict-api.log", workers=1)
    models = requests.get(api.url + "/models", timeout=10).json()["models"]
    yield {"api": api, "strict": strict, "ids": {m["name"]: m["id"] for m in models},
           "folder": Path(known_multilabel_model).name}
    for proc in (strict, api, worker):
        proc.stop()


def sdk(url: str, key: str = KEY, **options) -> openai.OpenAI:
    """The SDK as code written for OpenAI configures it, pointed at the service."""
    return openai.OpenAI(base_url=url + "/v1", api_key=key, **{"max_retries": 0, "timeout": 60, **options})


# --- answers ---------------------------------------------------------------------------------------------

def test_strings_parse_into_moderation_objects_with_every_openai_field(stack):
    with sdk(stack["api"].url) as client:
        response = client.moderations.create(model="omni-moderation-latest", input=TEXTS)
    assert isinstance(response, openai.types.ModerationCreateResponse)
    assert [r.flagged for r in response.results] == [False, True, True]
    puppy, idiot, kill = response.results
    expected = [KNOWN_MULTI.scores(text) for text in TEXTS]
    for result, scores in zip(response.results, expected):
        assert isinstance(result, openai.types.Moderation)
        assert math.isclose(result.category_scores.hate, scores["hate"], abs_tol=1e-5)
        assert math.isclose(result.category_scores.harassment, scores["harassment"], abs_tol=1e-5)
        assert math.isclose(result.category_scores.violence, scores["violence"], abs_tol=1e-5)
        # The model's labels apply to text; OpenAI's categories it lacks are false, 0.0 and applied to nothing.
        assert result.category_applied_input_types.hate == ["text"] == result.category_applied_input_types.violence
        assert result.categories.self_harm is False and result.category_scores.self_harm == 0.0
        assert result.categories.harassment_threatening is False and result.categories.illicit is False
        assert result.category_scores.violence_graphic == 0.0 and result.category_applied_input_types.illicit == []
        assert result.category_applied_input_types.sexual_minors == []
        dumped = result.model_dump(by_alias=True)
        for field in ("categories", "category_scores", "category_applied_input_types"):
            assert set(OPENAI_CATEGORIES) <= set(dumped[field]), field
    assert idiot.categories.harassment is True and idiot.categories.hate is False  # 0.35 >= config's 0.3
    assert kill.categories.violence is True and puppy.categories.violence is False


def test_id_names_the_job_and_model_names_the_served_model(stack):
    api = stack["api"].url
    with sdk(api) as client:
        response = client.moderations.create(input="you are an idiot")
    assert response.id.startswith("modr-")
    job = requests.get(f"{api}/jobs/{response.id.removeprefix('modr-')}", headers={"Authorization": f"Bearer {KEY}"},
                       timeout=10).json()
    assert job["status"] == "succeeded" and job["results"][0]["flagged"] is True
    # The model folder's name and its version (config.json's hash here), as GET /models lists it.
    assert response.model == stack["ids"]["known"]
    assert response.model.startswith(stack["folder"] + "-") and len(response.model) == len(stack["folder"]) + 13
    assert stack["ids"]["single"] != response.model
    with sdk(api) as client:  # the id a client logged names that model when sent back
        again = client.moderations.create(input="hello", model=response.model)
    assert again.model == response.model


def test_text_content_parts_answer_as_the_strings_do(stack):
    parts = [{"type": "text", "text": text} for text in TEXTS]
    with sdk(stack["api"].url) as client:
        from_parts = client.moderations.create(model="omni-moderation-latest", input=parts)
        from_strings = client.moderations.create(model="omni-moderation-latest", input=TEXTS)
    assert [r.model_dump() for r in from_parts.results] == [r.model_dump() for r in from_strings.results]
    assert from_parts.id != from_strings.id


def test_labels_openai_lacks_come_through_under_their_own_names(stack):
    with sdk(stack["api"].url) as client:
        response = client.moderations.create(model="single", input=["you idiot", "nice weather"])
    idiot, nice = response.results
    assert idiot.flagged and idiot.categories.model_extra["insult"] is True
    assert not nice.flagged and nice.categories.model_extra["OK"] is True  # a safe label never flags
    assert idiot.category_applied_input_types.model_extra["toxic"] == ["text"]
    assert idiot.categories.harassment is False and idiot.category_applied_input_types.harassment == []
    assert response.model == stack["ids"]["single"]


# --- the SDK's exceptions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("request_input, param, message", [
    (["hello", IMAGE_PART], "input[1]", "valid string"),  # a list of strings (its first item decides)
    ([{"type": "text", "text": "hello"}, IMAGE_PART], "input[1]", "this model moderates text only"),
    ([IMAGE_PART], "input[0]", "this model moderates text only"),
    ([{"type": "text", "text": "  "}], "input[0].text", "empty or only whitespace"),
])
def test_400_is_a_bad_request_error_naming_the_field(stack, request_input, param, message):
    with sdk(stack["api"].url) as client, pytest.raises(openai.BadRequestError) as raised:
        client.moderations.create(model="omni-moderation-latest", input=request_input)
    error = raised.value
    assert error.status_code == 400 and error.type == "invalid_request_error" and error.code == "invalid_request"
    assert error.param == param and message in error.message


def test_unknown_model_is_a_bad_request_error_on_param_model(stack):
    with sdk(stack["api"].url) as client, pytest.raises(openai.BadRequestError) as raised:
        client.moderations.create(model="gpt-4", input="hello")
    assert (raised.value.param, raised.value.code) == ("model", "unknown_model")
    assert "gpt-4" in raised.value.message


def test_401_is_an_authentication_error(stack):
    with sdk(stack["api"].url, key="not-a-key", max_retries=2) as client, \
            pytest.raises(openai.AuthenticationError) as raised:
        client.moderations.create(input="hello")
    error = raised.value
    assert error.status_code == 401 and error.type == "authentication_error" and error.code == "unauthorized"
    assert error.param is None


def _spend_budget(strict_url: str) -> None:
    """One submission for LIMITED_KEY that answers at once (404: no such job): the next one is over 1 per 5 s."""
    requests.delete(f"{strict_url}/jobs/{uuid.uuid4()}", headers={"Authorization": f"Bearer {LIMITED_KEY}"},
                    timeout=10)


def test_429_is_a_rate_limit_error_with_retry_after(stack):
    strict = stack["strict"].url
    with sdk(strict, key=LIMITED_KEY) as client:
        for _ in range(5):  # a stalled machine may let the 5 s window pass between the two calls: spend again
            _spend_budget(strict)
            try:
                client.moderations.create(input="hello")
            except openai.RateLimitError as limited:
                error = limited
                break
        else:
            pytest.fail("never rate limited")
    assert error.status_code == 429 and error.type == "rate_limit_error" and error.code == "rate_limited"
    assert 0 < float(error.response.headers["retry-after"]) <= 5


def test_the_sdk_honours_retry_after(stack):
    """With retries on, the SDK sleeps the 429's Retry-After and then succeeds."""
    strict, seen = stack["strict"].url, []

    def record(kind):
        return lambda event: seen.append((kind, time.monotonic(), getattr(event, "status_code", None),
                                          getattr(event, "headers", {}).get("retry-after")))
    http = openai.DefaultHttpx2Client(event_hooks={"request": [record("request")], "response": [record("response")]})
    with sdk(strict, key=LIMITED_KEY, max_retries=4, http_client=http) as client:
        for _ in range(5):
            seen.clear()
            _spend_budget(strict)
            response = client.moderations.create(input="you are an idiot")
            if any(status == 429 for kind, _, status, _ in seen if kind == "response"):
                break
        else:
            pytest.fail("never rate limited")
    assert response.results[0].flagged
    responses = [(at, status, retry_after) for kind, at, status, retry_after in seen if kind == "response"]
    requests_sent = [at for kind, at, _, _ in seen if kind == "request"]
    assert responses[-1][1] == 200 and len(requests_sent) == len(responses) >= 2
    for (answered_at, status, retry_after), next_request_at in zip(responses, requests_sent[1:]):
        assert status == 429
        assert next_request_at - answered_at >= float(retry_after) - 0.01  # the SDK waited what the header said


def test_503_queue_full_is_an_internal_server_error(stack):
    # The idle model's queue gets one job that no worker takes; `strict` allows one queued job per queue.
    queued = requests.post(stack["api"].url + "/generate", json={"input_text": "hello", "model": "idle"},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert queued.status_code == 202, queued.text
    with sdk(stack["strict"].url, key=QUEUE_KEY) as client, pytest.raises(openai.InternalServerError) as raised:
        client.moderations.create(model="idle", input="hello")
    error = raised.value
    assert isinstance(error, openai.APIStatusError) and error.status_code == 503
    assert error.type == "server_error" and error.code == "queue_full" and error.param is None
    # "1" from the API, or the limiter's longer wait: this key's one request per 5 s is spent (flask-limiter
    # keeps the longer of the two, since retrying sooner would only get a 429).
    assert float(error.response.headers["retry-after"]) >= 1
