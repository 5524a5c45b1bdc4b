"""GET /openapi.json, generated from the same pydantic models the API validates with."""

from __future__ import annotations

from flask import Blueprint, jsonify
from pydantic.json_schema import models_json_schema

from api import schemas as s
from api.extensions import services
from shared import __version__

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": _REF.format(model=ref)}}}


def _response(description: str, ref: str = "ErrorBody") -> dict:
    return {"description": description, "content": _json(ref)}


_ERRORS = {"400": _response("Invalid request"), "401": _response("Missing or invalid API key"),
           "413": _response("Body too large"), "415": _response("Not JSON"),
           "429": _response("Rate limited"), "503": _response("Redis or queue unavailable")}


def build_openapi(request_schemas: s.RequestSchemas, auth_required: bool = False) -> dict:
    models = [(m, "validation") for m in (request_schemas.generate, request_schemas.moderations)]
    models += [(m, "serialization") for m in (s.JobAccepted, s.Job, s.ModerationResponse, s.ErrorBody)]
    _, defs = models_json_schema(models, ref_template=_REF)
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
    wait = {"name": "wait", "in": "query", "required": False,
            "schema": {"type": "number", "minimum": 0, "maximum": request_schemas.max_wait}}
    # With API_KEYS on, the job operations need a Bearer key (health, metrics and this document do not).
    security = {"security": [{"bearer": []}]} if auth_required else {}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Text moderation service", "version": __version__},
        "components": {"schemas": defs["$defs"],
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/generate": {"post": {
                "summary": "Queue texts for moderation", **security,
                "requestBody": {"required": True, "content": _json("GenerateRequest")},
                "responses": {"202": _response("Queued", "JobAccepted"),
                              "200": _response("Finished within `wait`", "Job"), **_ERRORS},
            }},
            "/jobs/{job_id}": {"get": {
                "summary": "A job's state and results", **security,
                "parameters": [job_id, wait],
                "responses": {"200": _response("The job", "Job"), "404": _response("Unknown or expired"),
                              **_ERRORS},
            }},
            "/v1/moderations": {"post": {
                "summary": "OpenAI-compatible moderation (waits for the job)", **security,
                "requestBody": {"required": True, "content": _json("ModerationsRequest")},
                "responses": {"200": _response("Results", "ModerationResponse"),
                              "504": _response("Not finished in time; poll /jobs/{id}"), **_ERRORS},
            }},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Alive"}}}},
            "/readyz": {"get": {"summary": "Readiness", "responses": {
                "200": {"description": "Ready"}, "503": _response("Not ready")}}},
            "/models": {"get": {"summary": "Configured models", "responses": {"200": {"description": "Models"}}}},
        },
    }


@bp.get("/openapi.json")
def openapi():
    svc = services()
    return jsonify(build_openapi(svc.schemas, auth_required=bool(svc.settings.api_keys)))
