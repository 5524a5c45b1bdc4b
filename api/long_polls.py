"""Long polls bounded: how many requests of this API process may wait for a job at once, in all and per caller.

A wait (`GET /jobs/<id>?wait=N`, `POST /generate` with `wait`, `POST /v1/moderations`) holds one of the
process's gunicorn threads until the job finishes or the wait runs out. Without a bound, GUNICORN_THREADS
slow polls would take every thread and submissions, reads, health probes and /metrics would queue behind
them. So each process counts its waits (in memory, under a lock) and admits at most MAX_LONG_POLLS of them,
at most MAX_LONG_POLLS_PER_KEY per caller (api/limits.py `client_identity`: the API key, else the client IP).

Past a cap, a request that can answer without waiting does so at once, as if it had asked for no wait
(the job's current state, or the 202), with the header `X-Long-Poll: refused`; /v1/moderations, which cannot,
answers 429 `too_many_waits` with Retry-After before it creates any job. docs/long-polls.md has the rest.
"""

from __future__ import annotations

import logging
import os
import threading

from flask import Flask, current_app, g

from api.errors import APIError
from api.limits import client_identity
from api.metrics import LONG_POLLS_ACTIVE, LONG_POLLS_REFUSED
from shared.config import Settings

log = logging.getLogger(__name__)

HEADER = "X-Long-Poll"
REFUSED = "refused"
RETRY_AFTER_SECONDS = "1"
PROCESS_CAP, KEY_CAP = "process", "key"  # the `cap` label of moderation_long_polls_refused_total


class LongPolls:
    """The waits in progress in this process, in all and per caller; thread-safe."""

    def __init__(self, max_total: int, max_per_caller: int):
        self.max_total, self.max_per_caller = max_total, max_per_caller
        self._lock = threading.Lock()
        self._total = 0
        self._by_caller: dict[str, int] = {}

    def acquire(self, caller: str) -> str | None:
        """Take a place for `caller`: None when admitted, else the cap that refused it (the caller's own first)."""
        with self._lock:
            held = self._by_caller.get(caller, 0)
            if held >= self.max_per_caller:
                return KEY_CAP
            if self._total >= self.max_total:
                return PROCESS_CAP
            self._by_caller[caller] = held + 1
            self._total += 1
            return None

    def release(self, caller: str) -> None:
        with self._lock:
            held = self._by_caller.get(caller, 0) - 1
            if held > 0:
                self._by_caller[caller] = held
            else:
                self._by_caller.pop(caller, None)
            self._total -= 1


def init_long_polls(app: Flask, settings: Settings) -> LongPolls:
    polls = LongPolls(settings.max_long_polls, settings.max_long_polls_per_key)
    app.extensions["long_polls"] = polls
    threads = os.environ.get("GUNICORN_THREADS", "").strip()
    if threads.isdigit() and settings.max_long_polls >= int(threads):
        log.warning("MAX_LONG_POLLS=%d is not below GUNICORN_THREADS=%s: long polls can take every thread",
                    settings.max_long_polls, threads)

    @app.after_request
    def _mark_refused(response):
        if g.get("long_poll_refused"):
            response.headers[HEADER] = REFUSED
        return response

    @app.teardown_request
    def _release(_exc):
        # Runs however the request ended (an answer or an error): a place is never leaked.
        caller = g.pop("long_poll_caller", None)
        if caller is not None:
            LONG_POLLS_ACTIVE.dec()
            polls.release(caller)

    return polls


def admit_long_poll(wait: float | None) -> bool:
    """May this request wait `wait` seconds? True: a place is held for it until the request ends. False
    when it asks for no wait, or past a cap (counted, and the response gets `X-Long-Poll: refused`):
    then it answers at once, as if it had asked for no wait."""
    if not wait:
        return False
    if g.get("long_poll_caller") is not None:  # one place per request, however often it waits
        return True
    polls: LongPolls = current_app.extensions["long_polls"]
    caller = client_identity()
    refused_by = polls.acquire(caller)
    if refused_by is not None:
        LONG_POLLS_REFUSED.labels(refused_by).inc()
        g.long_poll_refused = True
        return False
    g.long_poll_caller = caller
    LONG_POLLS_ACTIVE.inc()
    return True


def require_long_poll(wait: float) -> None:
    """As admit_long_poll, for a request that cannot answer without waiting (/v1/moderations): past a cap,
    429 `too_many_waits` with Retry-After. Call it before creating anything the request would leave behind."""
    if not admit_long_poll(wait) and g.get("long_poll_refused"):
        polls: LongPolls = current_app.extensions["long_polls"]
        raise APIError(429, "too_many_waits",
                       f"too many requests are waiting on this server (at most {polls.max_total}, "
                       f"{polls.max_per_caller} per caller); retry after the Retry-After header's seconds",
                       headers={"Retry-After": RETRY_AFTER_SECONDS})
