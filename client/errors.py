"""Exceptions the client raises. An HTTP error answer carries the server's JSON error code and message."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from client.models import Job


class ModerationError(Exception):
    """Base of everything this package raises."""


class ServiceUnreachableError(ModerationError):
    """No HTTP answer at all (connection refused, timeout, DNS)."""


class APIError(ModerationError):
    """The service answered with an error status; `code`, `message`, `param` (the request field at fault,
    or None) and `error_type` (OpenAI's class: invalid_request_error, ...) come from its JSON error body."""

    def __init__(self, status_code: int, code: str, message: str, *, job_id: str | None = None,
                 retry_after: float | None = None, body: Any = None, param: str | None = None,
                 error_type: str | None = None):
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.code, self.message = status_code, code, message
        self.job_id, self.retry_after, self.body = job_id, retry_after, body
        self.param, self.error_type = param, error_type


class ClientError(APIError):
    """A 4xx: the request was wrong; sending it again unchanged will not help (429 aside)."""


class BadRequestError(ClientError):
    """400: invalid body or field (the message names the field and the limit), or an unknown model."""


class AuthenticationError(ClientError):
    """401: missing or unknown API key."""


class NotFoundError(ClientError):
    """404: unknown or expired job id (or a job of another API key)."""


class ConflictError(ClientError):
    """409: the job's state forbids the operation."""


class PayloadTooLargeError(ClientError):
    """413: the body is larger than the server's MAX_CONTENT_LENGTH."""


class UnsupportedMediaTypeError(ClientError):
    """415: the body is not JSON."""


class RateLimitedError(ClientError):
    """429: still rate limited after the client's bounded retries."""


class ServerError(APIError):
    """A 5xx."""


class ServiceUnavailableError(ServerError):
    """503: Redis unavailable or the queue full (MAX_QUEUE_DEPTH), still so after bounded retries."""


class GatewayTimeoutError(ServerError):
    """504: /v1/moderations did not finish in time; `job_id` can still be polled."""


class JobFailedError(ModerationError):
    """A job finished with status failed (or was canceled); `job` holds its record and error."""

    def __init__(self, job: Job):
        super().__init__(f"job {job.job_id} {job.status}: {job.error}")
        self.job = job


class JobTimeoutError(ModerationError):
    """A job did not finish within the caller's timeout; it may still finish later."""

    def __init__(self, job: Job, timeout: float):
        super().__init__(f"job {job.job_id} still {job.status} after {timeout:g}s")
        self.job = job


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError, 401: AuthenticationError, 404: NotFoundError, 409: ConflictError,
    413: PayloadTooLargeError, 415: UnsupportedMediaTypeError, 429: RateLimitedError,
    503: ServiceUnavailableError, 504: GatewayTimeoutError,
}


def error_from_response(response: httpx.Response, retry_after: float | None = None) -> APIError:
    """The exception for an error answer: its class from the status, its code and message from the body."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if not isinstance(detail, dict):
        detail = {"code": response.reason_phrase.lower().replace(" ", "_") or "error", "message": response.text[:500]}
    cls = _BY_STATUS.get(status) or (ClientError if status < 500 else ServerError)
    return cls(status, str(detail.get("code", "error")), str(detail.get("message", "")), job_id=detail.get("job_id"),
               retry_after=retry_after, body=body, param=detail.get("param"), error_type=detail.get("type"))
