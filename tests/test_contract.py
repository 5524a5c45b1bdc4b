"""One contract: /openapi.json is generated from the registered routes and the pydantic models the
responses are serialised with, so every route, method and error answer is in it, and every answer
validates against its documented schema.

In-process (Flask test client) against the session's private Redis, with API keys on; no worker, so jobs
stay queued (the live versions with a worker are in test_job_lifecycle.py and test_fuzz.py).
"""

from __future__ import annotations

import uuid

import jsonschema_rs
import pytest

import api
from api.contract import documented_methods, openapi_path
from shared.config import load_settings

KEY = "contract-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def app(redis_client, redis_server, tiny_multilabel_model):
    settings = load_settings({"REDIS_URL": redis_server.url, "MODELS": f"tiny={tiny_multilabel_model}",
                              "API_KEYS": KEY, "RATE_LIMITER": "off", "READ_RATE_LIMITER": "off"})
    return api.create_app(settings)


def test_every_route_is_documented_with_its_methods_and_error_answers(app):
    document = app.test_client().get("/openapi.json").json
    rules = list(app.url_map.iter_rules())
    assert {openapi_path(rule) for rule in rules} == set(document["paths"])
    for rule in rules:
        operation = app.view_functions[rule.endpoint].operation
        documented = document["paths"][openapi_path(rule)]
        for method in documented_methods(rule):
            responses = documented[method.lower()]["responses"]
            expected = {*map(str, operation.responses), *map(str, operation.error_statuses(auth_on=True))}
            assert expected <= set(responses), (rule.rule, method, expected - set(responses))
            for status, response in responses.items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    # The new endpoints and /models, with the answers clients branch on.
    paths = document["paths"]
    assert {"404", "409", "401", "429"} <= set(paths["/jobs/{job_id}"]["delete"]["responses"])
    assert {"200", "429"} <= set(paths["/models"]["get"]["responses"])
    assert {"200", "503"} <= set(paths["/queue"]["get"]["responses"])
    assert {"400", "401", "413", "415", "429", "503"} <= set(paths["/generate"]["post"]["responses"])
    assert "504" in paths["/v1/moderations"]["post"]["responses"]
    secret = paths["/v1/webhooks/secret"]
    assert {"201", "400", "401", "403", "415", "429", "503"} <= set(secret["post"]["responses"])
    assert secret["post"]["requestBody"]["required"] is False  # no body: the defaults
    assert {"200", "401"} <= set(secret["get"]["responses"])
    assert "secret" not in document["components"]["schemas"]["WebhookSecretInfo"]["properties"]
    keep = document["components"]["schemas"]["WebhookSecretRequest"]["properties"]["keep_previous_seconds"]
    assert keep["type"] == "integer" and keep["minimum"] == 0 and keep["maximum"] == 30 * 24 * 3600
    assert "429" not in paths["/healthz"]["get"]["responses"]  # exempt from rate limits
    assert document["components"]["schemas"]["Job"]["properties"]["status"]["enum"] == [
        "queued", "running", "succeeded", "failed", "canceled"]
    # Error bodies in OpenAI's shape: type and param beside code and message, param always present.
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert {"code", "message", "type", "param"} <= set(detail["required"])
    assert detail["properties"]["type"]["enum"] == [
        "invalid_request_error", "authentication_error", "rate_limit_error", "server_error"]
    # /v1/moderations takes text content parts and answers with every OpenAI category.
    request = document["components"]["schemas"]["ModerationsRequest"]["properties"]["input"]
    assert any(form.get("items", {}).get("$ref", "").endswith("/TextPart") for form in request["oneOf"])
    result = document["components"]["schemas"]["OpenAIModeration"]
    assert "harassment/threatening" in result["properties"]["category_applied_input_types"]["required"]


def test_an_undocumented_route_is_caught(app):
    app.add_url_rule("/sneaky", "sneaky", lambda: "x")
    from api.contract import undocumented_routes
    assert undocumented_routes(app) == ["/sneaky"]


def _validator(document: dict, path: str, method: str, status: int, media: str = "application/json"):
    schema = document["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


def test_answers_validate_against_their_documented_schemas(app):
    client = app.test_client()
    document = client.get("/openapi.json").json
    job = client.post("/generate", json={"input_text": "hello"}, headers=AUTH)
    job_id = job.json["job_id"]
    unknown = str(uuid.uuid4())
    calls = [
        ("post", "/generate", "/generate", {"json": {"input_text": "hello"}}, 202),
        ("post", "/generate", "/generate", {"json": {"input_text": ""}}, 400),
        ("post", "/generate", "/generate", {"data": "x", "content_type": "text/plain"}, 415),
        ("post", "/generate", "/generate", {"json": {"input_text": "hi", "callback_url": "http://127.0.0.1/"}}, 400),
        ("get", f"/jobs/{job_id}", "/jobs/{job_id}", {}, 200),
        ("get", f"/jobs/{job_id}?wait=99", "/jobs/{job_id}", {}, 400),
        ("get", f"/jobs/{unknown}", "/jobs/{job_id}", {}, 404),
        ("delete", f"/jobs/{job_id}", "/jobs/{job_id}", {}, 200),
        ("delete", f"/jobs/{job_id}", "/jobs/{job_id}", {}, 409),
        ("delete", f"/jobs/{unknown}", "/jobs/{job_id}", {}, 404),
        ("post", "/v1/moderations", "/v1/moderations", {"json": {"input": 3}}, 400),
        ("post", "/v1/moderations", "/v1/moderations",
         {"json": {"input": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}}, 400),
        ("get", "/v1/webhooks/secret", "/v1/webhooks/secret", {}, 200),
        ("post", "/v1/webhooks/secret", "/v1/webhooks/secret", {}, 201),
        ("post", "/v1/webhooks/secret", "/v1/webhooks/secret", {"json": {"keep_previous_seconds": 60}}, 201),
        ("post", "/v1/webhooks/secret", "/v1/webhooks/secret", {"json": {"keep_previous_seconds": 2.0}}, 201),
        ("post", "/v1/webhooks/secret", "/v1/webhooks/secret", {"json": {"keep_previous_seconds": -1}}, 400),
        ("post", "/v1/webhooks/secret", "/v1/webhooks/secret", {"json": {"keep_previous_seconds": "60"}}, 400),
        ("post", "/v1/webhooks/secret", "/v1/webhooks/secret", {"json": {"keep": 1}}, 400),
        ("post", "/v1/webhooks/secret", "/v1/webhooks/secret", {"data": "x", "content_type": "text/plain"}, 415),
        ("get", "/v1/webhooks/secret", "/v1/webhooks/secret", {}, 200),
        ("get", "/models", "/models", {}, 200),
        ("get", "/queue", "/queue", {}, 200),
        ("get", "/healthz", "/healthz", {}, 200),
        ("get", "/readyz", "/readyz", {}, 503),
        ("get", "/static/nothing.js", "/static/{filename}", {}, 404),
    ]
    for method, url, path, options, status in calls:
        response = getattr(client, method)(url, headers=AUTH, **options)
        assert response.status_code == status, (method, url, response.json)
        assert response.mimetype == "application/json"
        errors = list(_validator(document, path, method, status).iter_errors(response.json))
        assert not errors, (method, url, response.json, errors)
    assert client.get(f"/jobs/{job_id}", headers=AUTH).json["status"] == "canceled"
    # Without the key, the job endpoints answer 401 with the documented error body.
    refused = client.get(f"/jobs/{job_id}")
    assert refused.status_code == 401
    assert not list(_validator(document, "/jobs/{job_id}", "get", 401).iter_errors(refused.json))
    # The page and its files, with their documented media types.
    static = "/static/{filename}"
    for url, path in (("/", "/"), ("/static/app.js", static), ("/static/style.css", static)):
        response = client.get(url)
        assert response.status_code == 200
        assert response.mimetype in document["paths"][path]["get"]["responses"]["200"]["content"], url
