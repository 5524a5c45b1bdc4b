"""Moderating a whole file: concurrent multi-text jobs, results written in input order, resumable.

Threads each run one job at a time (submit, then long-poll); the main thread writes finished rows in
input order as soon as the rows before them are done, so the results file is always a prefix of the
remaining input and a re-run continues where the last one stopped.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from client.client import ModerationClient
from client.errors import AuthenticationError, ClientError, ModerationError, RateLimitedError
from client.rows import Row, check_text, result_record

# Keep each job's body well under the server's default MAX_CONTENT_LENGTH (1 MiB).
MAX_JOB_BYTES = 512 * 1024
# Errors that every later job would hit too: stop the run instead of failing each row.
FATAL_CODES = frozenset({"unknown_model"})


class FatalError(Exception):
    """A failure of the whole run, not of a row (bad API key, unknown model, the service failing): the run
    stops, and re-running the same command resumes it."""


class RefusedError(FatalError):
    """The service refused the whole run (a bad API key, an unknown model): the caller's to fix, not
    something running again later cures (the CLI exits 4 rather than 3)."""


@dataclass
class Tally:
    """What the closing summary reports, over every record in the results file."""

    rows: int = 0
    flagged: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, record: dict[str, Any]) -> None:
        self.rows += 1
        if record.get("error"):
            self.failures[str(record["error"].get("code", "error"))] += 1
            return
        if record.get("flagged"):
            self.flagged += 1
        for label, hit in (record.get("categories") or {}).items():
            self.categories[label] += 0
            if hit:
                self.categories[label] += 1

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def plan_jobs(rows: list[Row], batch_size: int) -> list[list[Row]]:
    """Consecutive rows grouped into jobs of at most batch_size texts and MAX_JOB_BYTES of JSON."""
    jobs: list[list[Row]] = []
    current: list[Row] = []
    size = 0
    for row in rows:
        text_bytes = len(json.dumps(row.text).encode())
        if current and (len(current) >= batch_size or size + text_bytes > MAX_JOB_BYTES):
            jobs.append(current)
            current, size = [], 0
        current.append(row)
        size += text_bytes
    if current:
        jobs.append(current)
    return jobs


Outcome = list[tuple[Row, dict[str, Any] | None, tuple[str, str] | None]]


class BulkModerator:
    """Runs the jobs for `rows` on `concurrency` threads: `start()`, then `next_outcome()` as jobs finish."""

    def __init__(self, client: ModerationClient, *, model: str | None, batch_size: int, concurrency: int,
                 job_timeout: float):
        self.client, self.model = client, model
        self.batch_size, self.concurrency, self.job_timeout = batch_size, concurrency, job_timeout
        self._todo: queue.Queue[list[Row] | None] = queue.Queue()
        self._done: queue.Queue[Outcome | FatalError] = queue.Queue()
        self._stop = threading.Event()

    def _moderate(self, rows: list[Row]) -> Outcome:
        try:
            job = self.client.submit([row.text or "" for row in rows], model=self.model,
                                     wait=min(5.0, self.client.limits().max_wait_seconds))
            if not job.finished:
                job = self.client.wait(job.job_id, timeout=self.job_timeout)
        except AuthenticationError as exc:
            raise RefusedError(f"the service refused the API key: {exc.message}") from exc
        except RateLimitedError as exc:  # still throttled after the client's retries
            raise FatalError(f"still rate limited after {self.client.max_retries} retries: {exc.message}") from exc
        except ClientError as exc:
            if exc.code in FATAL_CODES:
                raise RefusedError(exc.message) from exc
            if exc.code == "request_too_large" and len(rows) > 1:  # past MAX_REQUEST_TOKENS: halve the job
                half = len(rows) // 2
                return self._moderate(rows[:half]) + self._moderate(rows[half:])
            if len(rows) > 1:
                return self._one_by_one(rows)
            return [(rows[0], None, (exc.code, exc.message))]
        except ModerationError as exc:
            # Unreachable, still 429/503 after the client's retries, a 5xx, a job past --job-timeout: the
            # service is failing, not the rows. Stop (what is written stays) rather than mark every row failed.
            raise FatalError(f"the service failed: {exc}") from exc
        if job.succeeded and job.results is not None and len(job.results) == len(rows):
            return [(row, result.to_json(), None) for row, result in zip(rows, job.results)]
        if len(rows) > 1 and job.status == "failed":
            return self._one_by_one(rows)
        return [(row, None, ("job_" + job.status, f"job {job.job_id} {job.status}: {job.error}")) for row in rows]

    def _one_by_one(self, rows: list[Row]) -> Outcome:
        """One bad text must not fail its neighbours: after a refused or failed job, send each text alone."""
        return [outcome for row in rows for outcome in self._moderate([row])]

    def _work(self) -> None:
        while not self._stop.is_set():
            rows = self._todo.get()
            if rows is None:
                return
            try:
                self._done.put(self._moderate(rows))
            except FatalError as exc:
                self._done.put(exc)
                return
            except Exception as exc:  # a bug or an unexpected answer: stop the run, never hang waiting for it
                self._done.put(FatalError(f"unexpected error: {exc!r}"))
                return

    def start(self, rows: list[Row]) -> None:
        for job in plan_jobs(rows, self.batch_size):
            self._todo.put(job)
        for _ in range(self.concurrency):
            self._todo.put(None)
            threading.Thread(target=self._work, name="moderation-job", daemon=True).start()

    def next_outcome(self, timeout: float) -> Outcome | None:
        try:
            item = self._done.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, FatalError):
            self.stop()
            raise item
        return item

    def stop(self) -> None:
        """Start no more jobs (threads are daemons: jobs in flight are abandoned, and done again on resume)."""
        self._stop.set()


class OrderedWriter:
    """Writes records in input order: a record waits until every row before it is written."""

    def __init__(self, out: IO[str], rows: list[Row], on_write: Callable[[dict[str, Any]], None]):
        self.out, self.on_write = out, on_write
        self._order = [row.position for row in rows]
        self._next = 0
        self._waiting: dict[int, dict[str, Any]] = {}

    def add(self, row: Row, record: dict[str, Any]) -> None:
        self._waiting[row.position] = record
        wrote = False
        while self._next < len(self._order) and self._order[self._next] in self._waiting:
            done = self._waiting.pop(self._order[self._next])
            self.out.write(json.dumps(done, ensure_ascii=False) + "\n")
            self.on_write(done)
            self._next += 1
            wrote = True
        if wrote:
            self.out.flush()

    @property
    def complete(self) -> bool:
        return self._next == len(self._order)


def moderate_rows(client: ModerationClient, rows: list[Row], out: IO[str], *, model: str | None = None,
                  batch_size: int = 32, concurrency: int = 4, job_timeout: float = 600.0,
                  include_text: bool = False, on_record: Callable[[dict[str, Any]], None] = lambda r: None,
                  on_progress: Callable[[int, dict[str, Any]], None] = lambda n, r: None) -> None:
    """Moderate `rows` (those not yet in the output), writing one record per row to `out` in input order.
    `on_progress` sees every finished row as it finishes; `on_record` every record as it is written."""
    max_chars = client.limits().max_text_chars
    writer = OrderedWriter(out, rows, on_record)
    send: list[Row] = []
    rejected: list[tuple[Row, tuple[str, str]]] = []
    for row in rows:
        problem = check_text(row, max_chars)
        if problem:
            rejected.append((row, problem))
        else:
            send.append(row)
    runner = BulkModerator(client, model=model, batch_size=batch_size, concurrency=concurrency,
                           job_timeout=job_timeout)
    runner.start(send)
    try:
        for row, problem in rejected:
            record = result_record(row, None, problem, include_text)
            on_progress(1, record)
            writer.add(row, record)
        while not writer.complete:
            outcome = runner.next_outcome(timeout=0.25)
            for row, result, error in outcome or ():
                record = result_record(row, result, error, include_text)
                on_progress(1, record)
                writer.add(row, record)
    finally:
        runner.stop()
