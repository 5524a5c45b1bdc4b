"""Every way a request can be wrong, sent to the live API: each gets a clear 4xx JSON error (naming the
field or limit), and the server still serves a valid job afterwards.

The stack runs with small limits (MAX_BATCH_ITEMS=8, MAX_TEXT_CHARS=100, MAX_WAIT_SECONDS=10) so the
messages can be checked for them; MAX_CONTENT_LENGTH keeps its 1 MiB default.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import pytest
import requests

from tests.support import base_env, start_api, start_worker, wait_for_job

MAX_ITEMS, MAX_CHARS, MAX_WAIT = 8, 100, 10
JSON = {"Content-Type": "application/json"}
DEEP = 100_000  # nesting levels: far past any recursion limit, still well under 1 MiB


@dataclass
class Case:
    name: str
    path: str
    status: int
    code: str
    mentions: tuple[str, ...] = ()  # substrings the message must contain (field names, limits)
    method: str = "POST"
    body: object = None  # JSON-encoded unless `raw` is given
    raw: bytes | None = None
    headers: dict = field(default_factory=lambda: dict(JSON))
    params: dict | None = None


def generate(name, body=None, status=400, code="invalid_request", mentions=(), **kw) -> Case:
    return Case(name, "/generate", status, code, mentions, body=body, **kw)


def moderations(name, body=None, status=400, code="invalid_request", mentions=(), **kw) -> Case:
    return Case(name, "/v1/moderations", status, code, mentions, body=body, **kw)


def get_job(name, job_id, status, code, mentions=(), params=None) -> Case:
    return Case(name, f"/jobs/{job_id}", status, code, mentions, method="GET", headers={}, params=params)


TEN_MB = b'{"input_text": "' + b"x" * (10 * 2**20) + b'"}'
NESTED = b'{"input_text": ' + b"[" * DEEP + b"]" * DEEP + b"}"
HUGE_INT = b'{"input_text": "hi", "wait": 1' + b"0" * 5000 + b"}"
UNKNOWN_JOB = str(uuid.uuid4())

CASES = [
    # The body as a whole
    generate("non-JSON body", raw=b"input_text=hello", code="invalid_body", mentions=("not valid JSON",)),
    generate("truncated JSON", raw=b'{"input_text": "hi"', code="invalid_body", mentions=("not valid JSON",)),
    generate("empty body", raw=b"", code="invalid_body", mentions=("not valid JSON",)),
    generate("wrong content type", raw=b'{"input_text": "hi"}', headers={"Content-Type": "text/plain"},
             status=415, code="unsupported_media_type", mentions=("application/json",)),
    generate("no content type", raw=b'{"input_text": "hi"}', headers={}, status=415,
             code="unsupported_media_type", mentions=("application/json",)),
    generate("form-encoded body", raw=b"input_text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"},
             status=415, code="unsupported_media_type"),
    generate("invalid UTF-8", raw=b'{"input_text": "caf\xe9 \xff\xfe"}', code="invalid_body", mentions=("UTF-8",)),
    generate("JSON array, not an object", ["hello"], code="invalid_body", mentions=("JSON object",)),
    generate("JSON string, not an object", "hello", code="invalid_body", mentions=("JSON object",)),
    generate("JSON null", raw=b"null", code="invalid_body", mentions=("JSON object",)),
    generate("10 MB body", raw=TEN_MB, status=413, code="request_entity_too_large", mentions=("1048576",)),
    generate("deeply nested JSON", raw=NESTED, code="invalid_body", mentions=("nested too deeply",)),
    generate("5000-digit number", raw=HUGE_INT, code="invalid_body", mentions=("not valid JSON",)),
    # Fields
    generate("unknown field", {"input_text": "hi", "priority": "high"}, mentions=("unknown field 'priority'",)),
    generate("neither input_text nor inputs", {}, mentions=("exactly one of input_text", "inputs")),
    generate("both input_text and inputs", {"input_text": "a", "inputs": ["b"]}, mentions=("exactly one",)),
    generate("inputs empty", {"inputs": []}, mentions=("inputs", "at least 1")),
    generate("inputs not a list", {"inputs": "hello"}, mentions=("inputs", "list")),
    generate("inputs an object", {"inputs": {"0": "hello"}}, mentions=("inputs", "list")),
    generate("inputs with a number", {"inputs": ["ok", 5]}, mentions=("inputs[1]", "string")),
    generate("inputs with null", {"inputs": [None]}, mentions=("inputs[0]", "string")),
    generate("inputs with a nested list", {"inputs": [["a"]]}, mentions=("inputs[0]", "string")),
    generate("inputs over the item limit", {"inputs": ["x"] * (MAX_ITEMS + 1)}, mentions=("inputs", str(MAX_ITEMS))),
    generate("input_text not a string", {"input_text": 42}, mentions=("input_text", "string")),
    generate("input_text empty", {"input_text": ""}, mentions=("input_text", "at least 1")),
    generate("input_text only whitespace", {"input_text": " \t\n\u3000"}, mentions=("input_text", "whitespace")),
    generate("an empty text among inputs", {"inputs": ["ok", " "]}, mentions=("inputs[1]", "whitespace")),
    generate("input_text over the char limit", {"input_text": "x" * (MAX_CHARS + 1)},
             mentions=("input_text", str(MAX_CHARS))),
    generate("lone surrogate", raw=b'{"input_text": "bad \\ud800 text"}', mentions=("input_text", "unicode")),
    generate("wait negative", {"input_text": "hi", "wait": -1}, mentions=("wait", "0")),
    generate("wait huge", {"input_text": "hi", "wait": 1e9}, mentions=("wait", str(MAX_WAIT))),
    generate("wait infinite", raw=b'{"input_text": "hi", "wait": 1e999}', mentions=("wait",)),
    generate("wait NaN", raw=b'{"input_text": "hi", "wait": NaN}', mentions=("wait",)),
    generate("wait a string", {"input_text": "hi", "wait": "5"}, mentions=("wait", "number")),
    generate("wait a boolean", {"input_text": "hi", "wait": True}, mentions=("wait",)),
    generate("model that does not exist", {"input_text": "hi", "model": "gpt-17"}, code="unknown_model",
             mentions=("gpt-17", "tiny")),
    generate("model not a string", {"input_text": "hi", "model": ["tiny"]}, mentions=("model",)),
    # /v1/moderations
    moderations("moderations: non-JSON body", raw=b"{input: hi}", code="invalid_body", mentions=("not valid JSON",)),
    moderations("moderations: wrong content type", raw=b'{"input": "hi"}', headers={"Content-Type": "text/plain"},
                status=415, code="unsupported_media_type"),
    moderations("moderations: invalid UTF-8", raw=b'{"input": "\xc3\x28"}', code="invalid_body", mentions=("UTF-8",)),
    moderations("moderations: not an object", [1, 2], code="invalid_body", mentions=("JSON object",)),
    moderations("moderations: input missing", {}, mentions=("input", "required")),
    moderations("moderations: unknown field", {"input": "hi", "user": "u1"}, mentions=("unknown field 'user'",)),
    moderations("moderations: input empty list", {"input": []}, mentions=("input", "at least 1")),
    moderations("moderations: input empty text", {"input": ""}, mentions=("input",)),
    moderations("moderations: input with non-strings", {"input": ["ok", {"text": "x"}]}, mentions=("input[1]",)),
    moderations("moderations: input over the item limit", {"input": ["x"] * (MAX_ITEMS + 1)},
                mentions=("input", str(MAX_ITEMS))),
    moderations("moderations: text over the char limit", {"input": "x" * (MAX_CHARS + 1)},
                mentions=("input", str(MAX_CHARS))),
    moderations("moderations: model that does not exist", {"input": "hi", "model": "nope"}, code="unknown_model",
                mentions=("nope",)),
    moderations("moderations: 10 MB body", raw=TEN_MB, status=413, code="request_entity_too_large"),
    moderations("moderations: deeply nested JSON", raw=NESTED.replace(b"input_text", b"input"),
                code="invalid_body", mentions=("nested too deeply",)),
    # GET /jobs/<id>
    get_job("job id not a UUID", "not-a-uuid", 404, "not_found", mentions=("not-a-uuid",)),
    get_job("job id far too long", "a" * 4000, 404, "not_found"),
    get_job("job id with odd characters", "..%2F..%2Fetc%2Fpasswd", 404, "not_found"),
    get_job("unknown job", UNKNOWN_JOB, 404, "not_found", mentions=(UNKNOWN_JOB,)),
    get_job("?wait negative", UNKNOWN_JOB, 400, "invalid_request", ("wait", str(MAX_WAIT)), {"wait": "-1"}),
    get_job("?wait huge", UNKNOWN_JOB, 400, "invalid_request", ("wait", str(MAX_WAIT)), {"wait": "1e9"}),
    get_job("?wait not a number", UNKNOWN_JOB, 400, "invalid_request", ("wait",), {"wait": "soon"}),
    get_job("?wait NaN", UNKNOWN_JOB, 400, "invalid_request", ("wait",), {"wait": "nan"}),
    get_job("?wait infinite", UNKNOWN_JOB, 400, "invalid_request", ("wait",), {"wait": "inf"}),
    # Methods and paths that do not exist
    Case("GET /generate", "/generate", 405, "method_not_allowed", method="GET", headers={}),
    Case("PUT a job", f"/jobs/{UNKNOWN_JOB}", 405, "method_not_allowed", method="PUT", headers={}),
    Case("DELETE an unknown job", f"/jobs/{UNKNOWN_JOB}", 404, "not_found", method="DELETE", headers={}),
    Case("unknown path", "/admin", 404, "not_found", method="GET", headers={}),
]


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("hardening-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", MAX_BATCH_ITEMS=str(MAX_ITEMS),
                   MAX_TEXT_CHARS=str(MAX_CHARS), MAX_WAIT_SECONDS=str(MAX_WAIT))
    api = start_api(env, logs / "api.log")
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    yield api
    worker.stop()
    api.stop()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_request_gets_a_clear_4xx_json_error(stack, case: Case):
    data = case.raw if case.raw is not None else (json.dumps(case.body).encode() if case.body is not None else None)
    response = requests.request(case.method, stack.url + case.path, data=data, headers=case.headers,
                                params=case.params, timeout=30)
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == case.code, error
    assert isinstance(error["message"], str) and error["message"], error
    for fragment in case.mentions:
        assert fragment in error["message"], error


def test_server_is_alive_and_serves_valid_jobs_afterwards(stack):
    assert requests.get(stack.url + "/healthz", timeout=5).status_code == 200
    texts = ["x" * MAX_CHARS] * MAX_ITEMS  # exactly at both limits
    accepted = requests.post(stack.url + "/generate", json={"inputs": texts, "wait": MAX_WAIT}, timeout=30)
    assert accepted.status_code in (200, 202), accepted.text
    job = accepted.json() if accepted.status_code == 200 else wait_for_job(stack.url, accepted.json()["job_id"])
    assert job["status"] == "succeeded" and len(job["results"]) == MAX_ITEMS
    moderated = requests.post(stack.url + "/v1/moderations", json={"input": "hello"}, timeout=40)
    assert moderated.status_code == 200 and len(moderated.json()["results"]) == 1
    assert "Traceback" not in stack.log_tail(500_000)
