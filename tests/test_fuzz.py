"""schemathesis against the live API (gunicorn + tiny-model worker + private Redis), from its /openapi.json.

Positive and negative cases for every operation, plus stateful runs that follow POST /generate to its
job; API keys are on so `ignored_auth` is exercised too. Passing means no check failed, no response was
>= 500 (schemathesis's own count and the API's moderation_http_requests_total agree), and at least
1,000 cases ran. bench/fuzz.py runs the same thing longer.
"""

from __future__ import annotations

import pytest
import requests

from bench.fuzz import FUZZ_ENV, run_fuzz, status_counts
from tests.support import base_env, start_api, start_worker

API_KEY = "fuzz-key"
MIN_CASES = 1000


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("fuzz-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", API_KEYS=API_KEY, **FUZZ_ENV)
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    api = start_api(env, logs / "api.log")
    yield {"api": api, "logs": logs}
    worker.stop()
    api.stop()


def test_openapi_document_is_served_from_the_schemas(stack):
    doc = requests.get(stack["api"].url + "/openapi.json", timeout=5).json()
    assert doc["openapi"] == "3.1.0"
    generate = doc["components"]["schemas"]["GenerateRequest"]
    assert generate["additionalProperties"] is False
    text = generate["properties"]["input_text"]["anyOf"][0]
    assert text["maxLength"] == int(FUZZ_ENV["MAX_TEXT_CHARS"])  # limits come from Settings, not a copy
    assert generate["properties"]["inputs"]["anyOf"][0]["maxItems"] == int(FUZZ_ENV["MAX_BATCH_ITEMS"])
    assert generate["properties"]["model"]["anyOf"][0]["enum"] == ["tiny"]
    assert doc["paths"]["/generate"]["post"]["security"] == [{"bearer": []}]


def test_schemathesis_finds_no_server_error_in_1000_cases(stack, tmp_path):
    api = stack["api"]
    report, output = run_fuzz(api.url, tmp_path, max_examples=200, seed=20240601, api_key=API_KEY, timeout=400)
    print(output[-3000:])
    assert report.errors == [], output[-4000:]
    assert report.failures == [], output[-6000:]
    assert report.exit_code == 0, output[-4000:]
    assert report.generated >= MIN_CASES, f"only {report.generated} cases generated"
    answered = status_counts(api.url)
    assert sum(answered.values()) >= MIN_CASES, answered
    assert not {status for status in answered if status >= 500}, (answered, api.log_tail())
    assert requests.get(api.url + "/healthz", timeout=5).status_code == 200
