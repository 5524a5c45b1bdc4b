"""JSON errors everywhere, in OpenAI's shape: {"error": {"code", "message", "type", "param"}}.

`code` is ours (clients branch on it), `type` is OpenAI's class of error, picked from the status, and
`param` names the request field at fault (null when no single field is).
"""

from __future__ import annotations

import logging

from flask import Flask, current_app
from werkzeug.exceptions import HTTPException

from api.contract import reply
from api.schemas import ErrorBody, ErrorDetail

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None,
                 param: str | None = None, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}
        self.extra = extra


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_response(status: int, code: str, message: str, headers: dict | None = None, param: str | None = None,
                   **extra):
    detail = ErrorDetail(code=code, message=message, type=error_type(status), param=param, **extra)
    # param is always there (null when no field is at fault, as OpenAI does); job_id and status_url only when set
    return reply(ErrorBody(error=detail), status, headers, exclude_unset=True)


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
        return error_response(exc.status, exc.code, exc.message, exc.headers, exc.param, **exc.extra)

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
