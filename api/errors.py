"""JSON errors everywhere: {"error": {"code": "...", "message": "..."}}."""

from __future__ import annotations

import logging

from flask import Flask, current_app
from werkzeug.exceptions import HTTPException

from api.contract import reply
from api.schemas import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}
        self.extra = extra


def error_response(status: int, code: str, message: str, headers: dict | None = None, **extra):
    return reply(ErrorBody(error=ErrorDetail(code=code, message=message, **extra)), status, headers,
                 exclude_none=True)  # optional fields (job_id, status_url) appear only when set


# Codes clients branch on; other HTTP errors get their status name ("not_found", "method_not_allowed").
_CODES = {429: "rate_limited"}


def _http_code(exc: HTTPException) -> str:
    return _CODES.get(exc.code or 500) or (exc.name or "error").lower().replace(" ", "_")


def _http_message(exc: HTTPException) -> str:
    if exc.code == 429:
        return f"rate limit exceeded ({exc.description}); retry after the Retry-After header's seconds"
    if exc.code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return f"request body is larger than MAX_CONTENT_LENGTH ({limit} bytes)"
    return exc.description or exc.name


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def handle_api_error(exc: APIError):
        return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.errorhandler(HTTPException)
    def handle_http_exception(exc: HTTPException):
        response = error_response(exc.code or 500, _http_code(exc), _http_message(exc))
        # Keep headers the exception carries (Allow on 405, Retry-After on 429, ...).
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal server error")
