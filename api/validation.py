"""Parsing request bodies: every way a body can be wrong becomes a clear 4xx, never a 500."""

from __future__ import annotations

import json

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import APIError


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith(("function-", "union[", "list[", "str", "constrained-str")):
            path += f".{part}" if path else str(part)
    return path or "body"


def _describe(error: dict) -> str:
    field = _field_path(tuple(error.get("loc", ())))
    if error.get("type") == "extra_forbidden":
        return f"unknown field '{field}'"
    message = error.get("msg", "invalid").removeprefix("Value error, ")
    return f"{field}: {message}"


def _param(errors: list[dict]) -> str | None:
    """The field of the first error (the error body's `param`); None when the body as a whole is wrong."""
    field = _field_path(tuple(errors[0].get("loc", ()))) if errors else "body"
    return None if field == "body" else field


def parse_json_body(schema: type[BaseModel]) -> BaseModel:
    if not request.mimetype or request.mimetype != "application/json":
        raise APIError(415, "unsupported_media_type", "Content-Type must be application/json")
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise APIError(400, "invalid_body", "body is not valid UTF-8") from None
    except RecursionError:
        raise APIError(400, "invalid_body", "body JSON is nested too deeply") from None
    except ValueError as exc:
        raise APIError(400, "invalid_body", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_body", "body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        messages = list(dict.fromkeys(_describe(e) for e in errors))
        raise APIError(400, "invalid_request", "; ".join(messages[:5]), param=_param(errors)) from None
    except RecursionError:
        raise APIError(400, "invalid_body", "body JSON is nested too deeply") from None


def parse_optional_json_body(schema: type[BaseModel]) -> BaseModel:
    """An empty body is the schema's defaults; any other body is parsed as parse_json_body does."""
    if not request.get_data(cache=True):  # raises 413 past MAX_CONTENT_LENGTH
        return schema()
    return parse_json_body(schema)
