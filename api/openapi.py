"""GET /openapi.json, generated from the registered routes and the pydantic models they answer with."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from api import schemas as s
from api.contract import build_openapi, operation
from api.extensions import services
from shared import __version__

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
@operation("This document", {200: ("OpenAPI 3.1 document", "application/json")}, rate_limited=False)
def openapi():
    svc = services()
    return jsonify(build_openapi(current_app, svc.schemas, s.ErrorBody, "Text moderation service", __version__,
                                 auth_on=bool(svc.settings.api_keys)))
