"""A Python client and the `moderation` command-line tool for the text-moderation service.

Talks only HTTP (httpx); imports nothing of the service itself.

    from client import ModerationClient
    with ModerationClient("http://127.0.0.1:5000") as moderation:
        results = moderation.moderate(["hello", "you are an idiot"])
"""

from client.client import DEFAULT_URL, ModerationClient
from client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    GatewayTimeoutError,
    JobFailedError,
    JobTimeoutError,
    ModerationError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerError,
    ServiceUnavailableError,
    ServiceUnreachableError,
    UnsupportedMediaTypeError,
)
from client.models import Job, ModelInfo, Models, ModerationResult, RateLimits, Readiness, ServerLimits

__all__ = [
    "DEFAULT_URL", "ModerationClient", "APIError", "AuthenticationError", "BadRequestError", "ClientError",
    "ConflictError", "GatewayTimeoutError", "JobFailedError", "JobTimeoutError", "ModerationError",
    "NotFoundError", "PayloadTooLargeError", "RateLimitedError", "ServerError", "ServiceUnavailableError",
    "ServiceUnreachableError", "UnsupportedMediaTypeError", "Job", "ModelInfo", "ModerationResult", "Models",
    "RateLimits", "Readiness", "ServerLimits",
]
