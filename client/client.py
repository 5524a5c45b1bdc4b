"""ModerationClient: the service's HTTP API from Python (httpx; no torch, no Flask)."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from client.errors import (
    APIError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    ServiceUnreachableError,
    error_from_response,
)
from client.models import Job, ModelInfo, Models, ModerationResult, RateLimits, Readiness, ServerLimits

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:5000"
# Answers that mean "nothing was accepted, try again later": rate limited, queue full or Redis down.
RETRY_STATUSES = frozenset({429, 503})
MIN_RETRY_DELAY = 0.25
# Requests that spend the server's submission budget (and tokens): the ones paced by its x-ratelimit-* headers.
SUBMIT_METHODS = frozenset({"POST", "DELETE"})
IDEMPOTENCY_HEADER = "Idempotency-Key"
PACE_MARGIN = 0.1
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def parse_duration(value: str | None) -> float | None:
    """An OpenAI reset duration ("250ms", "1s", "1.5s", "6m0s", "1h2m3s"; a bare number is seconds) in
    seconds; None when absent or malformed."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def _header_int(headers: httpx.Headers, name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError):
        return None


def rate_limits_from_headers(headers: httpx.Headers, now: float | None = None) -> RateLimits | None:
    """The x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers; None if the answer has none."""
    values: dict[str, Any] = {}
    for budget in ("requests", "tokens"):
        values[f"limit_{budget}"] = _header_int(headers, f"x-ratelimit-limit-{budget}")
        values[f"remaining_{budget}"] = _header_int(headers, f"x-ratelimit-remaining-{budget}")
        values[f"reset_{budget}"] = parse_duration(headers.get(f"x-ratelimit-reset-{budget}"))
    if all(value is None for value in values.values()):
        return None
    return RateLimits(**values, observed_at=time.monotonic() if now is None else now)


def _find(schema: Any, key: str) -> Any:
    """The first value of `key` anywhere inside a JSON Schema fragment (depth first)."""
    if isinstance(schema, dict):
        if key in schema:
            return schema[key]
        children: Iterable[Any] = schema.values()
    elif isinstance(schema, list):
        children = schema
    else:
        return None
    for child in children:
        found = _find(child, key)
        if found is not None:
            return found
    return None


def limits_from_openapi(document: dict[str, Any]) -> ServerLimits:
    """MAX_BATCH_ITEMS, MAX_TEXT_CHARS and MAX_WAIT_SECONDS as the server publishes them on POST /generate's
    body; a limit the document does not state keeps the server's default."""
    schemas = document.get("components", {}).get("schemas", {})
    generate = schemas.get("GenerateRequest") or next(
        (s for s in schemas.values() if isinstance(s, dict) and "inputs" in s.get("properties", {})), {})
    properties = generate.get("properties", {})
    default = ServerLimits()
    items = _find(properties.get("inputs"), "maxItems")
    chars = _find(properties.get("inputs"), "maxLength")
    wait = _find(properties.get("wait"), "maximum")
    return ServerLimits(max_batch_items=int(items) if items else default.max_batch_items,
                        max_text_chars=int(chars) if chars else default.max_text_chars,
                        max_wait_seconds=float(wait) if wait is not None else default.max_wait_seconds)


class ModerationClient:
    """A thread-safe client for one moderation service.

    `timeout` bounds each HTTP request (long-polls get their `wait` on top). 429 and 503 answers are
    retried up to `max_retries` times, sleeping what Retry-After says, or an exponential back-off from
    0.25 s when that is longer (at most `max_retry_wait` s each); then the error is raised. `max_batch_items`
    overrides the server's MAX_BATCH_ITEMS, which is otherwise read from /openapi.json.

    Every submission carries a fresh Idempotency-Key, the same on each of its retries, so a retry (after a
    dropped connection too) never queues a second job. Submissions are paced by the server's x-ratelimit-*
    headers (`rate_limits`: the last ones seen): when a budget is spent, the next one waits for its reset
    (at most `max_retry_wait` s), calling `on_pause(seconds, budget)` first; `pace=False` only retries 429s.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0, *,
                 max_retries: int = 8, max_retry_wait: float = 60.0, max_batch_items: int | None = None,
                 transport: httpx.BaseTransport | None = None, pace: bool = True,
                 on_pause: Callable[[float, str], None] | None = None):
        headers = {"Accept": "application/json", "User-Agent": "moderation-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._max_batch_items = max_batch_items
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)
        self._limits: ServerLimits | None = None
        self._lock = threading.Lock()
        self.retries = 0  # 429/503 answers and connection failures slept through so far (all threads)
        self.rate_limits: RateLimits | None = None  # x-ratelimit-* of the last submission's answer
        self.pauses = 0  # waits for a spent budget's reset so far (all threads)
        self.pace, self.on_pause = pace, on_pause

    # -- plumbing ----------------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ModerationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        """At least what Retry-After says; never less than an exponential floor, because servers round the
        header down (flask-limiter sends 0 in the last second of a window) and a 0 would spin; a little
        jitter so concurrent callers do not come back in step."""
        floor = MIN_RETRY_DELAY * 2 ** attempt
        delay = max(parse_retry_after(response.headers.get("Retry-After")) or 0.0, floor)
        return min(delay * (1 + random.random() / 10), self.max_retry_wait)

    def _sleep_before_retry(self, method: str, path: str, why: str, delay: float) -> None:
        with self._lock:
            self.retries += 1
        log.info("%s %s: %s; retrying in %.1fs", method, path, why, delay)
        time.sleep(min(delay, self.max_retry_wait))

    def _observe(self, response: httpx.Response) -> None:
        limits = rate_limits_from_headers(response.headers)
        if limits is not None:
            with self._lock:
                self.rate_limits = limits

    def _pace(self, method: str, path: str) -> None:
        """Before a submission: if the last answer said a budget is spent, wait for its reset."""
        limits = self.rate_limits
        if limits is None or not self.pace:
            return
        wait, budget = limits.pause(time.monotonic())
        if wait <= 0:
            return
        # The server rounds its reset (to 0.1 s, or to the second): a little more, so we arrive after it.
        wait = min(wait + PACE_MARGIN, self.max_retry_wait)
        with self._lock:
            self.pauses += 1
        log.info("%s %s: no %s left in the rate limit; waiting %.1fs for its reset", method, path, budget, wait)
        if self.on_pause is not None:
            self.on_pause(wait, budget)
        time.sleep(wait)

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                timeout: float | None = None, retry: bool = True,
                idempotency_key: str | None = None) -> httpx.Response:
        """One API call; raises the APIError subclass of an error answer, after bounded retries of 429/503
        answers and of connection failures (ServiceUnreachableError once they run out). `idempotency_key`
        goes with every attempt, which makes a POST safe to retry after any connection failure."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        submission = method in SUBMIT_METHODS
        attempt = 0
        while True:
            if submission:
                self._pace(method, path)
            try:
                response = self._http.request(method, path, json=json, params=params, headers=headers,
                                              timeout=timeout if timeout is not None else self.timeout)
            except httpx.TransportError as exc:
                # Retry only where no job can be created twice: the connection never opened, a read, or a
                # request whose Idempotency-Key makes the server answer a repeat with the first one's job.
                safe = isinstance(exc, httpx.ConnectError) or method == "GET" or idempotency_key is not None
                if retry and attempt < self.max_retries and safe:
                    self._sleep_before_retry(method, path, repr(exc), MIN_RETRY_DELAY * 2 ** attempt)
                    attempt += 1
                    continue
                raise ServiceUnreachableError(f"{method} {self.base_url}{path}: {exc!r}") from exc
            if submission:
                self._observe(response)
            if response.status_code < 400:
                return response
            if retry and response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                self._sleep_before_retry(method, path, str(response.status_code), self._retry_delay(response, attempt))
                attempt += 1
                continue
            raise error_from_response(response, parse_retry_after(response.headers.get("Retry-After")))

    # -- the job API -------------------------------------------------------------------------------

    def submit(self, texts: str | Sequence[str], model: str | None = None, wait: float = 0,
               idempotency_key: str | None = None) -> Job:
        """POST /generate: queue one text or a list (at most MAX_BATCH_ITEMS). With `wait`, the server holds
        the answer up to that many seconds and returns the finished job if it finished by then. Sent with
        `idempotency_key` (default: a fresh uuid4), also on every retry: one call queues at most one job."""
        body: dict[str, Any] = {"input_text": texts} if isinstance(texts, str) else {"inputs": list(texts)}
        if model:
            body["model"] = model
        if wait:
            body["wait"] = wait
        response = self.request("POST", "/generate", json=body, timeout=self.timeout + wait,
                                idempotency_key=idempotency_key or str(uuid.uuid4()))
        return Job.from_json(response.json())

    def get(self, job_id: str, wait: float = 0) -> Job:
        """GET /jobs/<id>; with `wait` (at most the server's MAX_WAIT_SECONDS) long-polls until it finishes."""
        params = {"wait": f"{wait:g}"} if wait else None
        response = self.request("GET", f"/jobs/{job_id}", params=params, timeout=self.timeout + wait)
        return Job.from_json(response.json())

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Long-poll a job until it finishes (any final status); JobTimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = self.limits().max_wait_seconds
        while True:
            remaining = step if deadline is None else max(0.0, min(step, deadline - time.monotonic()))
            job = self.get(job_id, wait=remaining)
            if job.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(job, timeout or 0)

    def moderate(self, texts: str | Sequence[str], model: str | None = None,
                 timeout: float | None = None) -> list[ModerationResult]:
        """Moderate any number of texts: jobs of at most MAX_BATCH_ITEMS texts, all queued first, then
        awaited. One result per text, in order; JobFailedError if a job fails."""
        items = [texts] if isinstance(texts, str) else list(texts)
        size = self.batch_size()
        jobs = [self.submit(items[i:i + size], model=model) for i in range(0, len(items), size)]
        deadline = None if timeout is None else time.monotonic() + timeout
        results: list[ModerationResult] = []
        for job in jobs:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            done = job if job.finished else self.wait(job.job_id, timeout=remaining)
            if not done.succeeded or done.results is None:
                raise JobFailedError(done)
            results.extend(done.results)
        return results

    # -- service information -----------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        return self.request("GET", "/openapi.json").json()

    def limits(self) -> ServerLimits:
        """The server's limits from /openapi.json (fetched once); its defaults if it does not publish them."""
        if self._limits is None:
            try:
                limits = limits_from_openapi(self.openapi())
            except APIError:
                limits = ServerLimits()
            with self._lock:
                self._limits = limits
        return self._limits

    def batch_size(self) -> int:
        """Texts per job: the `max_batch_items` given to the client, else the server's MAX_BATCH_ITEMS."""
        return self._max_batch_items or self.limits().max_batch_items

    def models(self) -> Models:
        data = self.request("GET", "/models").json()
        return Models(default_model=data["default_model"], models=[ModelInfo.from_json(m) for m in data["models"]])

    def readiness(self) -> Readiness:
        """GET /readyz, never raising for a 503 (that is its answer: not ready, and why)."""
        try:
            response = self._http.get("/readyz")
        except httpx.TransportError as exc:
            raise ServiceUnreachableError(f"GET {self.base_url}/readyz: {exc!r}") from exc
        try:
            detail = response.json()
        except ValueError:
            detail = {"error": {"code": "not_json", "message": response.text[:200]}}
        return Readiness(ready=response.status_code == 200, detail=detail)

    def queue_stats(self) -> dict[str, Any] | None:
        """GET /queue (per model: depth, oldest job age, live workers, texts/s); None where the server has no
        such endpoint (older versions: read /metrics instead)."""
        try:
            return self.request("GET", "/queue").json()
        except NotFoundError:
            return None

    def metrics_text(self) -> str:
        return self.request("GET", "/metrics").text
