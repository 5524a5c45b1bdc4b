"""Bounded cost and fair service: one client's huge jobs against another client's one-line jobs.

    python -m bench.fairness [--mode maximal-body|largest-accepted] [--seconds 60] [--bulk-grace 60]

Starts a private Redis, the API (gunicorn) and one worker (the bundled model, or MODEL_PATH; the cache off,
as bench/stack.py sets it, so every text costs inference), then measures:

1. Redis bytes per accepted job, before the worker starts (nothing consumes): for a one-text job, for the
   largest request the service accepts and (mode maximal-body) for the maximal body. Every key's
   `MEMORY USAGE ... SAMPLES 0` before and after the submissions (the job record, the broker message in
   the queue's list, the pending zset entry, anything else), next to the texts' UTF-8 bytes and the target
   1.2 x text bytes + 2 KiB; `INFO memory` used_memory_dataset's change is shown as a cross-check.
2. Light jobs with nothing else running (--baseline-seconds): one short distinct sentence per job, sent
   --rate times a second, POST /generate wait=30 then GET /jobs/<id>?wait= for what is left of the 30 s.
3. The same light jobs for --seconds while a bulk client keeps --bulk-clients large requests in flight
   (each resubmitted with new texts when it finishes; a refused one is retried after --refused-retry s):
   - maximal-body: the issue's request, MAX_BATCH_ITEMS (256) distinct texts of ~4,000 characters, each
     character one token for the bundled (BERT-uncased WordPiece) tokenizer, the body just under
     MAX_CONTENT_LENGTH (1 MiB);
   - largest-accepted: texts of MAX_TEXT_TOKENS tokens (or fewer) totalling MAX_REQUEST_TOKENS (shrunk
     until the API accepts it), read from shared.config.load_settings(); where that setting does not
     exist (before the fix), the maximal body.
   After the window the light jobs in flight finish (up to their wait), accepted bulk jobs get
   --bulk-grace more seconds, and then the stack is stopped whatever is left running.

Light jobs that did not finish within their wait are looked up once more at the end: their finished_at
gives the completion latency the client would have seen had it kept waiting. The two clients connect from
different loopback addresses (127.0.0.2 light, 127.0.0.3 bulk), so per-caller limits (long-poll places,
tokens per minute) treat them as the two callers they stand for; a wait the API refuses (X-Long-Poll:
refused, answered at once) is polled again 0.25 s (light) or 1 s (bulk) later and counted.
Prints a Markdown report and appends it to bench/results/fairness.md (--results; --no-results to skip).
MAX_REQUEST_TOKENS, MAX_TEXT_TOKENS, MAX_BATCH_ITEMS, MAX_TEXT_CHARS, MAX_CONTENT_LENGTH and
ENGINE_CACHE_DIR, when set in this environment, are passed to the service (base_env drops them otherwise).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from bench.stack import CpuMeter, service_env
from scripts.launch import RedisServer, start_api, start_worker
from shared.config import BUNDLED_MODEL_PATH, PROJECT_ROOT, load_settings
from shared.jobs import KEY_PREFIX, PENDING_PREFIX

RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "fairness.md"
PASSED_THROUGH = ("MAX_REQUEST_TOKENS", "MAX_TEXT_TOKENS", "MAX_BATCH_ITEMS", "MAX_TEXT_CHARS", "MAX_CONTENT_LENGTH",
                  "MAX_LONG_POLLS", "MAX_LONG_POLLS_PER_KEY", "SLICE_TOKENS", "JOB_TIMEOUT", "TOKEN_RATE_LIMITER",
                  "ENGINE_CACHE_DIR")
# The two clients are told apart as two callers would be (API keys are off: by client IP), so per-caller
# limits (long-poll places, tokens per minute) count each on its own, never one against the other.
LIGHT_SOURCE, BULK_SOURCE = "127.0.0.2", "127.0.0.3"
# ASCII punctuation but the two characters JSON escapes: each is one byte and, for BERT's basic tokenizer,
# its own token (checked below with the model's tokenizer), so a text of n of them is n content tokens.
ONE_TOKEN_CHARS = "".join(c for c in string.punctuation if c not in '"\\')
_TRANSLATE = bytes(ord(ONE_TOKEN_CHARS[b % len(ONE_TOKEN_CHARS)]) for b in range(256))
BODY_MARGIN = 512  # bytes kept under MAX_CONTENT_LENGTH
FINISHED = ("succeeded", "failed", "canceled")
TARGET_FACTOR, TARGET_EXTRA = 1.2, 2048  # bytes in Redis per accepted job <= 1.2 x text bytes + 2 KiB


def log(message: str) -> None:
    print(f"[fairness {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- HTTP


def call(base_url: str, method: str, path: str, body: bytes | None = None, timeout: float = 90,
         source: str | None = None) -> tuple[int, dict, bool]:
    """One request on a fresh connection from address `source`: (status, JSON body, whether a long poll
    was refused: X-Long-Poll: refused, answered at once). A server that answers (413) and closes before
    it read the whole body still gives its status where the socket kept the response."""
    parsed = urlparse(base_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            conn.request(method, path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer may still be there
        response = conn.getresponse()
        data = response.read()
        try:
            payload = json.loads(data or b"{}")
        except ValueError:
            payload = {"raw": data[:200].decode(errors="replace")}
        refused = (response.getheader("X-Long-Poll") or "").lower() == "refused"
        return response.status, payload if isinstance(payload, dict) else {"raw": payload}, refused
    finally:
        conn.close()


def iso_seconds(value: str | None) -> float | None:
    """A record's ISO timestamp (2024-01-01T00:00:00.000Z) as epoch seconds."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------- request shapes


@dataclass
class Shape:
    """A bulk request: one text per entry of `lengths` (characters = content tokens)."""
    name: str
    lengths: list[int]
    note: str = ""

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def texts(self, rng: random.Random) -> list[str]:
        return [rng.randbytes(n).translate(_TRANSLATE).decode() for n in self.lengths]

    def describe(self) -> str:
        low, high = min(self.lengths), max(self.lengths)
        each = f"{low:,}" if low == high else f"{low:,}-{high:,}"
        return f"{len(self.lengths)} texts x {each} one-character tokens = {self.tokens:,} tokens"


def bulk_body(texts: list[str]) -> bytes:
    return json.dumps({"inputs": texts}, separators=(",", ":")).encode()


def _overhead(count: int) -> int:
    return len(bulk_body([""] * count))


def maximal_shape(settings) -> Shape:
    """The issue's request: MAX_BATCH_ITEMS texts, as long as a body just under MAX_CONTENT_LENGTH holds."""
    count = settings.max_batch_items
    per_text = min((settings.max_content_length - BODY_MARGIN - _overhead(count)) // count, settings.max_text_chars)
    return Shape("maximal body", [per_text] * count)


def largest_shape(settings, shrink: float = 1.0) -> Shape:
    """Texts of MAX_TEXT_TOKENS tokens (or fewer) totalling MAX_REQUEST_TOKENS x `shrink`, within
    MAX_BATCH_ITEMS, MAX_TEXT_CHARS and the body limit; the maximal body where MAX_REQUEST_TOKENS does
    not exist (the code before the fix)."""
    limit = getattr(settings, "max_request_tokens", None)
    if not limit:
        shape = maximal_shape(settings)
        return Shape("largest accepted", shape.lengths,
                     "no max_request_tokens in load_settings() (code before the fix): the maximal body")
    per_text = max(1, min(getattr(settings, "max_text_tokens", limit), settings.max_text_chars))
    total = max(1, int(limit * shrink))
    count = min(math.ceil(total / per_text), settings.max_batch_items)
    total = min(total, count * per_text, settings.max_content_length - BODY_MARGIN - _overhead(count))
    count = math.ceil(total / per_text)  # fewer texts where the body limit cut the total
    lengths = [total // count + (1 if i < total % count else 0) for i in range(count)]
    note = f"MAX_REQUEST_TOKENS={limit:,}, MAX_TEXT_TOKENS={getattr(settings, 'max_text_tokens', '?')}"
    if shrink < 1:
        note += f", shrunk to {shrink:.0%} of MAX_REQUEST_TOKENS before the API accepted it"
    return Shape("largest accepted", [n for n in lengths if n], note)


def token_check(model_path: str, shape: Shape) -> str:
    """Content tokens (no [CLS]/[SEP]) of one body of `shape`, by the model's own tokenizer."""
    path = Path(model_path) / "tokenizer.json"
    if not path.exists():
        return f"(not checked: no {path})"
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    texts = shape.texts(random.Random(0))
    counts = [len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    chars = sum(len(t) for t in texts)
    verdict = "each character one token" if sum(counts) == chars else "**not** one token per character"
    return f"tokenizer: {sum(counts):,} content tokens for {chars:,} characters ({verdict}; per text " \
           f"{min(counts):,}-{max(counts):,})"


# ---------------------------------------------------------------- Redis bytes per job


def _key_group(key: str, kind: str) -> str:
    if key.startswith(KEY_PREFIX):
        return "job record"
    if key.startswith(PENDING_PREFIX):
        return "pending entry"
    if kind == "list":
        return "broker message"
    return "other: " + (key.rsplit(":", 1)[0] + ":*" if key.count("-") >= 4 else key)


def _snapshot(client) -> dict[str, tuple[str, int]]:
    return {key: (client.type(key), client.memory_usage(key, samples=0) or 0) for key in client.scan_iter(count=1000)}


@dataclass
class BytesRow:
    name: str
    what: str
    statuses: list[int]
    text_bytes: int = 0
    per_job: dict[str, float] = field(default_factory=dict)
    dataset_delta: float = 0.0

    @property
    def accepted(self) -> int:
        return self.statuses.count(202)

    @property
    def total(self) -> float:
        return sum(self.per_job.values())

    @property
    def target(self) -> float:
        return TARGET_FACTOR * self.text_bytes + TARGET_EXTRA


def measure_bytes(api_url: str, client, name: str, what: str, make_texts, count: int) -> BytesRow:
    """Submit `count` jobs (no wait, no worker running) and share out the growth of every key over them."""
    bodies = [make_texts(i) for i in range(count)]
    before, dataset_before = _snapshot(client), client.info("memory")["used_memory_dataset"]
    statuses = []
    for texts in bodies:
        statuses.append(call(api_url, "POST", "/generate", bulk_body(texts))[0])
    time.sleep(0.3)
    after, dataset_after = _snapshot(client), client.info("memory")["used_memory_dataset"]
    row = BytesRow(name, what, statuses, text_bytes=sum(len(t.encode()) for t in bodies[0]))
    accepted = max(1, row.accepted)
    for key, (kind, size) in after.items():
        grown = size - before.get(key, ("", 0))[1]
        if grown:
            group = _key_group(key, kind)
            row.per_job[group] = row.per_job.get(group, 0) + grown / accepted
    row.dataset_delta = (dataset_after - dataset_before) / accepted
    return row


def drop_jobs(client) -> None:
    """Remove what the byte measurement left (records, pending entries, broker messages) before a worker runs."""
    for key in list(client.scan_iter(count=1000)):
        if key.startswith((KEY_PREFIX, PENDING_PREFIX)) or client.type(key) == "list":
            client.delete(key)


# ---------------------------------------------------------------- light client


@dataclass
class Light:
    sent_wall: float
    latency: float = 0.0
    finished: bool = False  # succeeded within the wait
    status: str = ""
    job_id: str = ""
    later: float | None = None  # completion latency from finished_at, for jobs past their wait
    end_status: str = ""  # for jobs past their wait: their status when the run ended
    refused_polls: int = 0  # waits the API refused (a long-poll cap): answered at once, polled again
    error: str = ""


def light_job(api_url: str, text: str, wait: float, out: Light) -> None:
    started = time.monotonic()
    deadline = started + wait
    try:
        submission = json.dumps({"input_text": text, "wait": wait}).encode()
        status, body, refused = call(api_url, "POST", "/generate", submission, timeout=wait + 30, source=LIGHT_SOURCE)
        out.job_id = body.get("job_id", "")
        while status in (200, 202) and body.get("status") in ("queued", "running") and out.job_id:
            out.refused_polls += refused
            if refused:  # answered at once: poll again a little later, not in a tight loop
                time.sleep(max(0.0, min(0.25, deadline - time.monotonic())))
            remaining = deadline - time.monotonic()
            if remaining < 0.05:
                break
            status, body, refused = call(api_url, "GET", f"/jobs/{out.job_id}?wait={remaining:.2f}",
                                         timeout=wait + 30, source=LIGHT_SOURCE)
        out.status = body.get("status") or f"HTTP {status}"
        out.finished = status == 200 and out.status == "succeeded"
    except (OSError, http.client.HTTPException) as exc:
        out.error = type(exc).__name__
    out.latency = time.monotonic() - started


def run_light(api_url: str, seconds: float, rate: float, wait: float,
              tag: str) -> tuple[list[Light], list[threading.Thread]]:
    """Send one light job every 1/rate s for `seconds`, each in its own thread; returns at once after the last send."""
    lights: list[Light] = []
    threads: list[threading.Thread] = []
    start = time.monotonic()
    index = 0
    while index / rate < seconds:
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        text = f"Light check {tag}-{index}: is the weather in town nice enough for a walk today?"
        out = Light(sent_wall=time.time())
        thread = threading.Thread(target=light_job, args=(api_url, text, wait, out), daemon=True)
        thread.start()
        lights.append(out)
        threads.append(thread)
        index += 1
    return lights, threads


def resolve_late(api_url: str, lights: list[Light]) -> None:
    """For jobs past their wait: the completion latency their finished_at gives, if they finished since."""
    for light in lights:
        if light.finished or not light.job_id:
            continue
        try:
            status, body, _ = call(api_url, "GET", f"/jobs/{light.job_id}", timeout=10, source=LIGHT_SOURCE)
        except (OSError, http.client.HTTPException):
            continue
        light.end_status = body.get("status") or f"HTTP {status}"
        finished = iso_seconds(body.get("finished_at")) if status == 200 else None
        if finished is not None and body.get("status") == "succeeded":
            light.later = finished - light.sent_wall


def percentile(values: list[tuple[float, bool]], q: float) -> tuple[float, bool]:
    """Nearest-rank percentile of (seconds, censored) pairs; censored values are lower bounds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] if ordered else (0.0, False)


def fmt(value: tuple[float, bool]) -> str:
    seconds, censored = value
    text = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    return ("≥" if censored else "") + text


def light_row(label: str, lights: list[Light], wait: float, end_wall: float) -> tuple[str, str | None]:
    """Table row (client-observed latency, past-the-wait ones counted as their wait) and, if any job ran past
    its wait, a line with the completion latencies finished_at gives."""
    seen = [(light.latency, not light.finished) for light in lights]
    late = [light for light in lights if not light.finished]
    errors = sum(1 for light in lights if light.error)
    row = (f"| {label} | {len(lights)} | {fmt(percentile(seen, 50))} | {fmt(percentile(seen, 90))} | "
           f"{fmt(percentile(seen, 99))} | {fmt(max(seen) if seen else (0.0, False))} | "
           f"{len(late)}{f' ({errors} errors)' if errors else ''} | {sum(light.refused_polls for light in lights)} |")
    if not late:
        return row, None
    full = [(light.latency, False) if light.finished else (light.later, False) if light.later is not None
            else (end_wall - light.sent_wall, True) for light in lights]
    never = [light for light in late if light.later is None]
    states = {}
    for light in never:
        states[light.end_status or "unknown"] = states.get(light.end_status or "unknown", 0) + 1
    found = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    return row, (f"{label}: completion latency counting the {len(late)} past their wait by finished_at: p50 "
                 f"{fmt(percentile(full, 50))}, p90 {fmt(percentile(full, 90))}, p99 {fmt(percentile(full, 99))}, "
                 f"max {fmt(max(full))}; {len(never)} not finished when the run ended (≥: unfinished then"
                 f"{f'; their status then: {found}' if found else ''})")


# ---------------------------------------------------------------- bulk client


@dataclass
class Bulk:
    slot: int
    submitted: float  # seconds into the loaded phase
    status: int = 0
    answered: float = 0.0  # seconds to the POST's answer
    job_id: str = ""
    final: str = ""
    took: float | None = None  # POST to finished, as the client saw it
    worker_time: float | None = None  # the record's started_at to finished_at
    submitted_wall: float = field(default_factory=time.time)
    started_after: float | None = None  # the record's started_at - the POST's time
    refused_polls: int = 0
    error: str = ""


class BulkClient:
    """Keeps `slots` requests of `shape` in flight: each resubmitted with new texts when it finishes."""

    def __init__(self, api_url: str, shape: Shape, slots: int, refused_retry: float, phase_start: float,
                 stagger: float = 0.0):
        self.api_url, self.shape, self.refused_retry, self.phase_start = api_url, shape, refused_retry, phase_start
        self.stagger = stagger
        self.records: list[Bulk] = []
        self.stop_submitting, self.abort = threading.Event(), threading.Event()
        self.first_answers = threading.Semaphore(0)
        self.threads = [threading.Thread(target=self._slot, args=(slot,), daemon=True) for slot in range(slots)]

    def start(self) -> BulkClient:
        for thread in self.threads:
            thread.start()
        return self

    def in_flight(self) -> list[Bulk]:
        return [r for r in self.records if r.status == 202 and r.took is None and not r.error and not r.final]

    def _slot(self, slot: int) -> None:
        rng = random.Random(1000 + slot)
        first = True
        time.sleep(slot * self.stagger)
        while not self.stop_submitting.is_set():
            body = bulk_body(self.shape.texts(rng))
            record = Bulk(slot, time.monotonic() - self.phase_start)
            self.records.append(record)
            started = time.monotonic()
            try:
                record.status, reply, _ = call(self.api_url, "POST", "/generate", body, timeout=120, source=BULK_SOURCE)
            except (OSError, http.client.HTTPException) as exc:
                record.error = type(exc).__name__
                reply = {}
            record.answered = time.monotonic() - started
            if first:
                self.first_answers.release()
                first = False
            if record.status != 202:
                self.stop_submitting.wait(self.refused_retry)
                continue
            record.job_id = reply.get("job_id", "")
            while not self.abort.is_set():
                try:
                    status, job, refused = call(self.api_url, "GET", f"/jobs/{record.job_id}?wait=30", timeout=60,
                                                source=BULK_SOURCE)
                except (OSError, http.client.HTTPException) as exc:
                    if not self.abort.is_set():
                        record.error = type(exc).__name__
                    return
                if status == 200 and job.get("status") in FINISHED:
                    record.took = time.monotonic() - started
                    record.final = job["status"]
                    begun, ended = iso_seconds(job.get("started_at")), iso_seconds(job.get("finished_at"))
                    if begun and ended:
                        record.worker_time = ended - begun
                        record.started_after = begun - record.submitted_wall
                    break
                if status != 200:
                    record.final = f"GET {status}"
                    return
                if refused:
                    record.refused_polls += 1
                    self.abort.wait(1.0)


    def resolve_unfinished(self) -> None:
        """Where each accepted job still running stood when the run ended (status, when it started)."""
        for record in self.in_flight():
            try:
                status, job, _ = call(self.api_url, "GET", f"/jobs/{record.job_id}", timeout=20, source=BULK_SOURCE)
            except (OSError, http.client.HTTPException):
                continue
            record.final = f"{job.get('status') or f'HTTP {status}'} at the end"
            begun = iso_seconds(job.get("started_at"))
            if begun:
                record.started_after = begun - record.submitted_wall


def bulk_table(client: BulkClient, ended: float) -> str:
    lines = ["| slot | submitted at | POST answer | answered in | outcome | started after POST | POST to finished "
             "| worker time |", "|---:|---:|---|---:|---|---:|---:|---:|"]
    for r in client.records:
        if r.status != 202:
            outcome, took = r.error or "refused", ""
        elif r.took is not None:
            outcome, took = r.final, f"{r.took:.1f} s"
        else:
            outcome, took = r.error or r.final or "unfinished at the end", f"> {ended - r.submitted:.0f} s"
        if r.refused_polls:
            outcome += f" ({r.refused_polls} waits refused)"
        worker = f"{r.worker_time:.1f} s" if r.worker_time is not None else ""
        started = f"{r.started_after:.1f} s" if r.started_after is not None else ""
        lines.append(f"| {r.slot} | {r.submitted:.1f} s | {r.status or '-'} | {r.answered * 1000:.0f} ms | {outcome} "
                     f"| {started} | {took} | {worker} |")
    refused = [r for r in client.records if r.status != 202]
    if len(refused) > 12:  # a refused body is retried every --refused-retry s: summarise them
        kept = [line for line, r in zip(lines[2:], client.records) if r.status == 202]
        codes = sorted({r.status for r in refused})
        answer = sorted(r.answered for r in refused)[len(refused) // 2]
        lines = lines[:2] + kept + [f"| all | | {', '.join(map(str, codes))} x {len(refused)} | median "
                                    f"{answer * 1000:.0f} ms | refused | | | |"]
    return "\n".join(lines)


# ---------------------------------------------------------------- the run


def git_head() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        changed = subprocess.run(["git", "diff", "--name-only", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                 text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("maximal-body", "largest-accepted"), default="maximal-body")
    parser.add_argument("--seconds", type=float, default=60, help="light-client window under bulk load")
    parser.add_argument("--baseline-seconds", type=float, default=10, help="light-client window with no bulk load")
    parser.add_argument("--rate", type=float, default=2.0, help="light jobs per second")
    parser.add_argument("--wait", type=float, default=30, help="each light job's wait, seconds")
    parser.add_argument("--bulk-clients", type=int, default=2, help="bulk requests kept in flight")
    parser.add_argument("--bulk-grace", type=float, default=60,
                        help="seconds accepted bulk jobs may still run after the light jobs finished")
    parser.add_argument("--bulk-stagger", type=float, default=1.0,
                        help="seconds between the bulk requests' first submissions (so that they do not share "
                             "one worker batch by chance: at 0, whether they do decides the result)")
    parser.add_argument("--refused-retry", type=float, default=1.0,
                        help="seconds before a refused bulk request is resent")
    parser.add_argument("--bytes-samples", type=int, default=2, help="bulk jobs per Redis-bytes measurement")
    parser.add_argument("--model", default=os.environ.get("MODEL_PATH") or str(BUNDLED_MODEL_PATH))
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="Markdown file the report is appended to")
    parser.add_argument("--no-results", action="store_true", help="print the report only")
    parser.add_argument("--heading", help="the report's heading (default: mode, date and HEAD)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="moderation-fairness-"))
    head = git_head()
    load_before = os.getloadavg()
    redis_server = RedisServer(workdir / "redis").start()
    passed = {name: os.environ[name] for name in PASSED_THROUGH if os.environ.get(name)}
    env = service_env(redis_server.url, args.model, "cpu", **passed)
    settings = load_settings(env)
    limit = getattr(settings, "max_request_tokens", None)
    settings_note = (f"MAX_REQUEST_TOKENS={f'{limit:,}' if limit else '(absent)'}, "
                     f"MAX_TEXT_TOKENS={getattr(settings, 'max_text_tokens', '(absent)')}, "
                     f"MAX_BATCH_ITEMS={settings.max_batch_items}, MAX_TEXT_CHARS={settings.max_text_chars:,}, "
                     f"MAX_CONTENT_LENGTH={settings.max_content_length:,}, CACHE_TTL=0, ENGINE={env.get('ENGINE')}, "
                     f"GUNICORN_WORKERS={args.gunicorn_workers}, WORKER_CONCURRENCY="
                     f"{env.get('WORKER_CONCURRENCY', '0 (auto)')}")
    for attr in ("slice_tokens", "job_timeouts", "max_long_polls", "max_long_polls_per_key", "token_rate_limiter"):
        if hasattr(settings, attr):  # settings the fix adds; absent before it
            settings_note += f", {attr.upper()}={getattr(settings, attr) or 'off'}"
    log(f"HEAD {head}; {settings_note}; logs in {workdir}")
    api = worker = None
    client = redis_server.client()
    try:
        api = start_api(env, workdir / "api.log", workers=args.gunicorn_workers)

        # 1. Redis bytes per accepted job, nothing consuming.
        call(api.url, "POST", "/generate", bulk_body(["warm-up: creates the queue's keys"]))
        largest = largest_shape(settings)
        if limit:  # shrink until the API accepts it (the limit may be exclusive); the probes stay queued
            for shrink in (1.0, 0.99, 0.98, 0.95, 0.9):
                largest = largest_shape(settings, shrink)
                status = call(api.url, "POST", "/generate", bulk_body(largest.texts(random.Random(7))))[0]
                if status == 202:
                    break
                log(f"largest-accepted probe at {shrink:.0%}: HTTP {status}")
        maximal = maximal_shape(settings)
        shapes = [largest] + ([maximal] if args.mode == "maximal-body" and maximal.lengths != largest.lengths else [])
        rows = [measure_bytes(api.url, client, "one-text job", "a light job's sentence",
                              lambda i: [f"Light check bytes-{i}: is the weather in town nice enough for a walk?"], 10)]
        rows += [measure_bytes(api.url, client, shape.name, "; ".join(filter(None, (shape.describe(), shape.note))),
                               lambda i, shape=shape: shape.texts(random.Random(100 + i)), args.bytes_samples)
                 for shape in shapes]
        for row in rows:
            log(f"Redis bytes per job, {row.name}: {row.total:,.0f} (text {row.text_bytes:,}; statuses {row.statuses})")
        drop_jobs(client)
        bulk_shape = largest if args.mode == "largest-accepted" else maximal
        checked = token_check(args.model, bulk_shape)
        log(f"bulk request: {bulk_shape.describe()}, body {len(bulk_body(bulk_shape.texts(random.Random(0)))):,} "
            f"bytes; {checked}")

        # 2. Light jobs alone.
        worker = start_worker(env, workdir / "worker.log", timeout=300)
        for i in range(5):  # warm-up
            light_job(api.url, f"Warm-up sentence number {i}, nothing to see here.", args.wait, Light(time.time()))
        log(f"baseline: light jobs for {args.baseline_seconds:g} s")
        idle, threads = run_light(api.url, args.baseline_seconds, args.rate, args.wait, "idle")
        for thread in threads:
            thread.join(args.wait + 40)

        # 3. Light jobs while the bulk client keeps its requests in flight.
        log(f"loaded: {args.bulk_clients} bulk requests in flight ({bulk_shape.name}), "
            f"light jobs for {args.seconds:g} s")
        cpu = CpuMeter({"API": api.process.pid, "worker": worker.process.pid, "Redis": redis_server.process.pid})
        cpu.__enter__()
        phase_start = time.monotonic()
        bulk = BulkClient(api.url, bulk_shape, args.bulk_clients, args.refused_retry, phase_start,
                          args.bulk_stagger).start()
        for _ in range(args.bulk_clients):
            bulk.first_answers.acquire(timeout=60)
        light_start = time.monotonic() - phase_start
        loaded, threads = run_light(api.url, args.seconds, args.rate, args.wait, "loaded")
        bulk.stop_submitting.set()
        drained = time.monotonic() + args.wait + 40
        for thread in threads:
            thread.join(max(0.1, drained - time.monotonic()))
        log(f"light jobs done; accepted bulk jobs get up to {args.bulk_grace:g} s more")
        deadline = time.monotonic() + args.bulk_grace
        while bulk.in_flight() and time.monotonic() < deadline:
            time.sleep(1)
        bulk.abort.set()
        ended = time.monotonic() - phase_start
        cpu.__exit__(None, None, None)
        end_wall = time.time()
        still_running = len(bulk.in_flight())
        bulk.resolve_unfinished()
        resolve_late(api.url, idle + loaded)
        memory = client.info("memory")
    finally:
        if worker is not None:
            worker.stop(timeout=5)  # a bulk job may still be running: no warm shutdown
        if api is not None:
            api.stop(timeout=5)
        redis_server.stop()

    # Report.
    light_lines = ["| light jobs | n | p50 | p90 | p99 | max | not finished within wait | waits refused |",
                   "|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for label, lights in ((f"alone ({args.baseline_seconds:g} s)", idle),
                          (f"with bulk load ({args.seconds:g} s, from {light_start:.1f} s)", loaded)):
        row, note = light_row(label, lights, args.wait, end_wall)
        light_lines.append(row)
        notes += [note] if note else []
    bytes_lines = ["| job | what | POST answers | text bytes | job record | broker message | pending entry | other "
                   "| total per job | target 1.2 x text + 2 KiB | met | used_memory_dataset change |",
                   "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for row in rows:
        known = ("job record", "broker message", "pending entry")
        other = sum(v for k, v in row.per_job.items() if k not in known)
        other_names = ", ".join(k.removeprefix("other: ") for k in row.per_job if k not in known)
        cells = " | ".join(f"{row.per_job.get(k, 0):,.0f}" for k in known)
        met = ("yes" if row.total <= row.target else "**no**") if row.accepted else "(refused)"
        bytes_lines.append(f"| {row.name} | {row.what} | {', '.join(map(str, row.statuses))} | {row.text_bytes:,} | "
                           f"{cells} | {other:,.0f}{f' ({other_names})' if other_names else ''} | {row.total:,.0f} | "
                           f"{row.target:,.0f} | {met} | {row.dataset_delta:,.0f} |")
    accepted = [r for r in bulk.records if r.status == 202]
    heading = args.heading or f"{args.mode}, {time.strftime('%Y-%m-%d %H:%M')} (HEAD {head[:12]})"
    command = "python -m bench.fairness " + " ".join(argv if argv is not None else sys.argv[1:])
    document = "\n".join([
        f"## {heading}", "",
        f"`{command}`", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; git HEAD: {head}",
        f"- machine: {os.cpu_count()} cores; load average before {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- mode: {args.mode}; model: {args.model}; settings: {settings_note}",
        f"- bulk request: {bulk_shape.describe()}, body {len(bulk_body(bulk_shape.texts(random.Random(0)))):,} bytes"
        f"{f' ({bulk_shape.note})' if bulk_shape.note else ''}; {checked}",
        f"- bulk client: {args.bulk_clients} requests kept in flight (first ones {args.bulk_stagger:g} s apart), "
        f"resubmitted when finished, for the "
        f"{args.seconds:g} s window; then up to {args.bulk_grace:g} s for accepted jobs after the light jobs "
        f"finished; the stack was stopped at {ended:.0f} s with {still_running} still running",
        f"- clients: light from {LIGHT_SOURCE}, bulk from {BULK_SOURCE} (two callers by IP; API keys off)",
        f"- light client: one short distinct sentence per job, {args.rate:g}/s, POST /generate wait={args.wait:g} then "
        f"GET ?wait= for the rest of the {args.wait:g} s; latencies as the client saw them (≥: did not finish "
        f"within its wait, counted as the wait)",
        f"- CPU seconds in the loaded phase ({ended:.0f} s, {os.cpu_count()} cores): "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.spent.items()),
        f"- Redis at the end: used_memory {memory['used_memory'] / 2**20:.1f} MiB, peak "
        f"{memory['used_memory_peak'] / 2**20:.1f} MiB", "",
        "### Light jobs", "", *light_lines, "", *[f"- {n}" for n in notes], *([""] if notes else []),
        f"### Bulk requests ({len(accepted)} accepted, {len(bulk.records) - len(accepted)} not)", "",
        bulk_table(bulk, ended), "",
        "### Redis bytes per accepted job (queued, no worker running)", "", *bytes_lines, "",
        "Columns: each key's `MEMORY USAGE ... SAMPLES 0` growth over the submissions, per accepted job; "
        "used_memory_dataset's change is a cross-check (allocator rounding and client buffers move it: "
        "meaningless for a one-text job).", "",
    ])
    print("\n" + document)
    if not args.no_results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        if not args.results.exists():
            args.results.write_text("# Fairness: bounded cost and fair service (bench/fairness.py)\n\n"
                                    "One client's maximal (or largest accepted) requests against another "
                                    "client's one-line jobs; Redis bytes per job. Newest runs at the end.\n\n")
        with args.results.open("a") as out:
            out.write("\n" + document)
        log(f"appended to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
