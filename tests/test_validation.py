"""Unit level: request validation, the OpenAPI document agreeing with it, and the security settings.

The app runs in-process (Flask test client) against the session's private Redis; the live-server
versions of these checks are in test_input_hardening.py, test_security.py and test_fuzz.py.
"""

from __future__ import annotations

import jsonschema_rs  # schemathesis's own validator (Rust regex, close to the ECMA dialect)
import pytest

import api
from api.limits import parse_limits
from api.schemas import NOT_BLANK, build_schemas
from api.validation import _field_path
from shared.config import DEFAULT_RATE_LIMITER, DEFAULT_READ_RATE_LIMITER, ConfigError, load_settings

SCHEMAS = build_schemas(max_items=3, max_chars=10, max_wait=5, model_names=("tiny",))


@pytest.fixture
def client(redis_client, redis_server, tiny_multilabel_model):
    """An in-process app on the private Redis (flushed), built from an environment like the real one."""
    def make(**env):
        settings = load_settings({"REDIS_URL": redis_server.url, "MODELS": f"tiny={tiny_multilabel_model}",
                                  "RATE_LIMITER": "off", "READ_RATE_LIMITER": "off", **env})
        return api.create_app(settings).test_client()
    return make


# --- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (None, DEFAULT_RATE_LIMITER), ("", DEFAULT_RATE_LIMITER), ("  ", DEFAULT_RATE_LIMITER),
    ("off", ""), ("OFF", ""), ("10/second;100/minute", "10/second;100/minute"),
])
def test_rate_limiter_setting(raw, expected):
    env = {} if raw is None else {"RATE_LIMITER": raw}
    assert load_settings(env).rate_limiter == expected


def test_default_rate_limit_is_valid_flask_limiter_syntax():
    assert parse_limits(DEFAULT_RATE_LIMITER) == [DEFAULT_RATE_LIMITER]
    assert parse_limits(" 60/minute; 1000/hour ;") == ["60/minute", "1000/hour"]


@pytest.mark.parametrize("raw", ["lots", "5 per fortnight", "60/minute;oops"])
def test_malformed_rate_limiter_fails_at_start_up(client, raw):
    with pytest.raises(ConfigError, match="RATE_LIMITER"):
        client(RATE_LIMITER=raw)


def test_reads_have_their_own_budget_setting():
    assert load_settings({}).read_rate_limiter == DEFAULT_READ_RATE_LIMITER != DEFAULT_RATE_LIMITER
    assert load_settings({"READ_RATE_LIMITER": "off", "RATE_LIMITER": "5/minute"}).read_rate_limiter == ""
    assert load_settings({"READ_RATE_LIMITER": "10/second"}).rate_limiter == DEFAULT_RATE_LIMITER


def test_malformed_read_rate_limiter_fails_at_start_up(client):
    with pytest.raises(ConfigError, match="READ_RATE_LIMITER"):
        client(READ_RATE_LIMITER="5 per fortnight")


def test_webhooks_need_a_secret_with_the_allowlist():
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_settings({"WEBHOOK_ALLOWED_HOSTS": "hooks.example.com"})
    settings = load_settings({"WEBHOOK_ALLOWED_HOSTS": "Hooks.Example.com, 127.0.0.1", "WEBHOOK_SECRET": "s"})
    assert settings.webhook_allowed_hosts == {"hooks.example.com", "127.0.0.1"}


@pytest.mark.parametrize("raw, error", [("one", "must be an integer"), ("-1", "must be >= 0")])
def test_trusted_proxies_must_be_a_hop_count(raw, error):
    with pytest.raises(ConfigError, match=f"TRUSTED_PROXIES {error}"):
        load_settings({"TRUSTED_PROXIES": raw})


def test_api_keys_file_skips_comments_and_blank_lines(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\n  spaced-key  \n\n#disabled-key\nlast-key")
    assert load_settings({"API_KEYS_FILE": str(keys)}).api_keys == ("spaced-key", "last-key")
    assert load_settings({"API_KEYS": " , ,"}).api_keys == ()


# --- in-process app: keys, limits, error bodies ------------------------------------------------------

def test_bearer_key_checks(client):
    app = client(API_KEYS="k1,k2")
    assert app.post("/generate", json={"input_text": "hi"}).status_code == 401
    assert app.post("/generate", json={"input_text": "hi"}, headers={"Authorization": "bearer k2"}).status_code == 202
    assert app.post("/generate", json={"input_text": "hi"}, headers={"Authorization": "Bearer k1 "}).status_code == 202
    for header in ("Bearer k", "Bearer k1k2", "Bearer k1,k2", "Token k1", "k1"):
        response = app.post("/generate", json={"input_text": "hi"}, headers={"Authorization": header})
        assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized", header


def test_429_body_and_headers_in_process(client):
    app = client(READ_RATE_LIMITER="2/minute", RATE_LIMIT_STORAGE_URL="memory://")
    assert [app.get("/models").status_code for _ in range(2)] == [200, 200]
    limited = app.get("/models")
    assert limited.status_code == 429
    assert limited.json["error"]["code"] == "rate_limited" and "2 per 1 minute" in limited.json["error"]["message"]
    expected_headers = {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}
    assert expected_headers <= set(limited.headers.keys())
    assert all(app.get(path).status_code != 429 for path in ("/healthz", "/metrics", "/openapi.json") * 3)


def test_413_names_the_limit(client):
    response = client(MAX_CONTENT_LENGTH="2048").post("/generate", data=b"x" * 4096,
                                                      content_type="application/json")
    assert response.status_code == 413 and "2048" in response.json["error"]["message"]


# --- validation messages -----------------------------------------------------------------------------

@pytest.mark.parametrize("loc, path", [
    (("inputs", 3), "inputs[3]"), (("input", "list[constrained-str]", 1), "input[1]"),
    (("input", "constrained-str"), "input"), ((), "body"), (("wait",), "wait"),
])
def test_field_paths_name_the_field(loc, path):
    assert _field_path(loc) == path


def test_not_blank_pattern_matches_str_isspace_exactly():
    import re
    for code in range(0x3100):
        char = chr(code)
        assert (re.fullmatch(NOT_BLANK, char) is None) == char.isspace(), hex(code)


# --- the document and the validators agree -------------------------------------------------------------

BODIES = [
    {"input_text": "hi"}, {"inputs": ["a", "b"]}, {"input_text": "hi", "inputs": None},
    {"input_text": None, "inputs": ["a"]}, {}, {"input_text": "a", "inputs": ["b"]}, {"input_text": None},
    {"input_text": ""}, {"input_text": " \u3000"}, {"input_text": "x" * 11}, {"inputs": []},
    {"inputs": ["a"] * 4}, {"inputs": [1]}, {"input_text": "hi", "extra": 1}, {"input_text": "hi", "wait": 5},
    {"input_text": "hi", "wait": 5.5}, {"input_text": "hi", "wait": -0.1}, {"input_text": "hi", "model": "tiny"},
    {"input_text": "hi", "wait": "1"}, {"input_text": 3},
]


def served_document(client, **env) -> dict:
    """/openapi.json of an app whose limits match SCHEMAS."""
    return client(MAX_BATCH_ITEMS="3", MAX_TEXT_CHARS="10", MAX_WAIT_SECONDS="5", **env).get("/openapi.json").json


@pytest.fixture(scope="module")
def document(redis_server, tiny_multilabel_model):
    settings = load_settings({"REDIS_URL": redis_server.url, "MODELS": f"tiny={tiny_multilabel_model}",
                              "MAX_BATCH_ITEMS": "3", "MAX_TEXT_CHARS": "10", "MAX_WAIT_SECONDS": "5"})
    return api.create_app(settings).test_client().get("/openapi.json").json


TEXT_PART = {"type": "text", "text": "hi"}
IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
MODERATION_BODIES = [
    {"input": "hi"}, {"input": ["a", "b"]}, {"input": [TEXT_PART]},
    {"input": [TEXT_PART, {"type": "text", "text": "b"}]}, {"input": [TEXT_PART] * 4}, {"input": [IMAGE_PART]},
    {"input": [TEXT_PART, IMAGE_PART]}, {"input": []},
    {"input": [{"type": "text", "text": " "}]}, {"input": [{"type": "text"}]}, {"input": [{"text": "hi"}]},
    {"input": [{**TEXT_PART, "extra": 1}]}, {"input": ["a", TEXT_PART]}, {"input": [TEXT_PART, "a"]},
    {"input": TEXT_PART}, {"input": [{"type": "text", "text": "x" * 11}]},
    {"input": "hi", "model": "omni-moderation-latest"}, {"input": "hi", "model": "tiny"}, {"input": 3}, {},
]


SCHEMA_CASES = [("GenerateRequest", "generate", body) for body in BODIES] + \
    [("ModerationsRequest", "moderations", body) for body in MODERATION_BODIES]


@pytest.mark.parametrize("documented, validator, body", SCHEMA_CASES,
                         ids=[f"{name}:{str(body)[:50]}" for name, _, body in SCHEMA_CASES])
def test_request_schemas_in_openapi_accept_exactly_what_the_api_accepts(document, documented, validator, body):
    schema = _inline_refs(document["components"]["schemas"][documented], document["components"]["schemas"])
    documented_ok = jsonschema_rs.Draft202012Validator(schema).is_valid(body)
    try:
        getattr(SCHEMAS, validator).model_validate(body)
        api_ok = True
    except ValueError:
        api_ok = False
    assert documented_ok == api_ok


@pytest.mark.parametrize("body, param, mentions", [
    ({"input": [TEXT_PART, IMAGE_PART]}, "input[1]", "this model moderates text only"),
    ({"input": [IMAGE_PART]}, "input[0]", "this model moderates text only"),
    ({"input": ["ok", 3]}, "input[1]", "valid string"),
    ({"input": [TEXT_PART, {"type": "text", "text": ""}]}, "input[1].text", "at least 1 character"),
    ({"input": "hi", "user": "u1"}, "user", "unknown field 'user'"),
    ({"input": "hi", "model": "nope"}, "model", "not configured"),
])
def test_moderations_400_names_the_field_in_param(client, body, param, mentions):
    response = client().post("/v1/moderations", json=body)
    assert response.status_code == 400, response.json
    error = response.json["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and mentions in error["message"]


def test_error_bodies_carry_type_and_param_for_every_status(client):
    app = client(API_KEYS="k", MAX_CONTENT_LENGTH="2048")
    key = {"Authorization": "Bearer k"}
    answers = [
        (app.post("/generate", json={"input_text": "hi"}), 401, "authentication_error", None),
        (app.post("/generate", data="{", content_type="application/json", headers=key), 400,
         "invalid_request_error", None),
        (app.post("/generate", json={}, headers=key), 400, "invalid_request_error", None),  # the body as a whole
        (app.get("/jobs/00000000-0000-4000-8000-000000000000?wait=x", headers=key), 400, "invalid_request_error",
         "wait"),
        (app.get("/jobs/00000000-0000-4000-8000-000000000000", headers=key), 404, "invalid_request_error", None),
        (app.post("/generate", data="x", content_type="text/plain", headers=key), 415, "invalid_request_error", None),
        (app.post("/generate", data=b"x" * 4096, content_type="application/json", headers=key), 413,
         "invalid_request_error", None),
        (app.put("/generate", headers=key), 405, "invalid_request_error", None),
        (app.get("/readyz"), 503, "server_error", None),
    ]
    for response, status, kind, param in answers:
        assert response.status_code == status, response.json
        error = response.json["error"]
        assert (error["type"], error["param"]) == (kind, param), error
        assert {"code", "message", "type", "param"} <= set(error)


def _inline_refs(node, defs):
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def test_openapi_limits_follow_settings_and_auth(client, document):
    keyed = served_document(client, API_KEYS="k")
    wait = next(p for p in keyed["paths"]["/jobs/{job_id}"]["get"]["parameters"] if p["name"] == "wait")
    assert wait["schema"]["maximum"] == 5
    assert keyed["paths"]["/v1/moderations"]["post"]["security"] == [{"bearer": []}]
    assert "401" in keyed["paths"]["/generate"]["post"]["responses"]
    assert "security" not in document["paths"]["/generate"]["post"]
    assert "401" not in document["paths"]["/generate"]["post"]["responses"]
