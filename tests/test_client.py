"""The Python client (client/) and the `moderation` command against a real stack: gunicorn API, private Redis,
`python -m worker` with a tiny real model. Extra API processes cover API keys + a tight rate limit (429) and
a full queue with no worker (503)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from client import (
    AuthenticationError,
    BadRequestError,
    ModerationClient,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    ServerLimits,
    ServiceUnavailableError,
)
from client.bulk import moderate_rows
from client.cli import queue_from_metrics
from client.rows import Row
from shared.queues import broker_lists, queue_for_model
from tests.support import ROOT, base_env, start_api, start_worker, wait_until

MAX_ITEMS, MAX_CHARS = 8, 200
BUDGET_TOKENS = 20
API_KEY = "client-test-key"
TEXTS = ["i love my new puppy", "we should kill all martians", "you are an idiot", "the weather is nice today",
         "great food from mexico", "i disagree with your tax policy", "martians are animals", "hate them all",
         "you are great", "eradicate them", "nice puppy"]


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("client-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", DEFAULT_MODEL="tiny",
                   MAX_BATCH_ITEMS=str(MAX_ITEMS), MAX_TEXT_CHARS=str(MAX_CHARS), MAX_CONTENT_LENGTH="4096",
                   BATCH_MAX_WAIT_MS="10")
    api = start_api(env, logs / "api.log")
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    # Same Redis and worker, but API keys on and a tight per-key rate limit.
    limited = start_api({**env, "API_KEYS": API_KEY, "RATE_LIMITER": "4/second"}, logs / "api-limited.log",
                        workers=1)
    # Its own Redis database, where no worker listens: the queue fills at MAX_QUEUE_DEPTH.
    full_url = redis_server.url.rsplit("/", 1)[0] + "/3"
    full = start_api({**env, "REDIS_URL": full_url, "MAX_QUEUE_DEPTH": "1"}, logs / "api-full.log", workers=1)
    # Same Redis and worker, a request budget of a few short texts (MAX_REQUEST_TOKENS).
    budget = start_api({**env, "MAX_REQUEST_TOKENS": str(BUDGET_TOKENS)}, logs / "api-budget.log", workers=1)
    yield {"api": api.url, "limited": limited.url, "full": full.url, "full_redis": full_url, "env": env,
           "budget": budget.url}
    for proc in (budget, full, limited, worker, api):
        proc.stop()


@pytest.fixture
def client(stack):
    with ModerationClient(stack["api"], timeout=20) as moderation:
        yield moderation


def same_result(a: dict, b: dict) -> bool:
    return a["categories"] == b["categories"] and all(
        math.isclose(a["category_scores"][k], b["category_scores"][k], abs_tol=1e-4) for k in a["category_scores"])


# -- the Python client ------------------------------------------------------------------------------

def test_limits_are_read_from_the_server(client):
    assert client.limits() == ServerLimits(max_batch_items=MAX_ITEMS, max_text_chars=MAX_CHARS,
                                           max_wait_seconds=30.0)
    assert client.batch_size() == MAX_ITEMS


def test_submit_then_get_with_wait(client):
    accepted = client.submit(TEXTS[:3])
    assert accepted.status == "queued" and accepted.model == "tiny" and not accepted.finished
    assert accepted.status_url == f"/jobs/{accepted.job_id}"
    job = client.get(accepted.job_id, wait=20)
    assert job.succeeded and job.finished and job.error is None and job.finished_at
    assert len(job.results) == 3
    assert set(job.results[0].categories) == {"hate", "harassment", "violence"}
    single = client.submit(TEXTS[0], wait=20)  # input_text form; finished within wait: the whole job
    assert single.succeeded and single.results[0].to_json() == job.results[0].to_json()


def test_moderate_chunks_past_max_batch_items_and_keeps_order(client):
    texts = TEXTS * 2  # 22 texts: 3 jobs of at most MAX_ITEMS
    results = client.moderate(texts, timeout=60)
    assert len(results) == len(texts)
    one_by_one = {text: client.moderate(text)[0] for text in TEXTS}
    for text, result in zip(texts, results):
        assert same_result(result.to_json(), one_by_one[text].to_json()), text
        assert result.flagged == bool(result.flagged_categories)


def test_4xx_raise_typed_errors_with_the_servers_code(client, stack):
    with pytest.raises(BadRequestError) as unknown_model:
        client.submit(["hello"], model="nope")
    assert unknown_model.value.code == "unknown_model" and "nope" in unknown_model.value.message
    assert unknown_model.value.param == "model" and unknown_model.value.error_type == "invalid_request_error"
    with pytest.raises(BadRequestError) as blank:
        client.submit(["fine", "   "])
    assert blank.value.status_code == 400 and "inputs[1]" in blank.value.message and blank.value.param == "inputs[1]"
    with pytest.raises(BadRequestError, match="MAX|at most|longer|200"):
        client.submit(["x" * (MAX_CHARS + 1)])
    with pytest.raises(PayloadTooLargeError):
        client.submit(["y" * (MAX_CHARS - 10)] * MAX_ITEMS * 3)
    with pytest.raises(NotFoundError) as missing:
        client.get("00000000-0000-4000-8000-000000000000")
    assert missing.value.code == "not_found"
    with ModerationClient(stack["limited"], api_key="wrong") as wrong, pytest.raises(AuthenticationError) as auth:
        wrong.submit(["hello"])
    assert auth.value.status_code == 401 and auth.value.error_type == "authentication_error"


def test_429_retry_after_is_honoured_then_bounded(stack):
    # pace=False: the client would otherwise wait for the x-ratelimit-* reset and never meet the 429.
    with ModerationClient(stack["limited"], api_key=API_KEY, timeout=20, pace=False) as patient:
        started = time.monotonic()
        jobs = [patient.submit([text]) for text in TEXTS[:10]]  # 10 submissions against 4/second
        assert patient.retries >= 1 and time.monotonic() - started >= 1.0
        assert all(patient.wait(job.job_id, timeout=60).succeeded for job in jobs)
    with ModerationClient(stack["limited"], api_key=API_KEY, max_retries=0, pace=False) as impatient:
        with pytest.raises(RateLimitedError) as limited:
            for _ in range(20):
                impatient.submit(["hello"])
        assert limited.value.code == "rate_limited" and limited.value.retry_after is not None
        assert impatient.retries == 0  # max_retries=0: the first 429 is raised


def test_503_queue_full_retry_after_is_honoured_then_bounded(stack):
    import redis
    queue = redis.Redis.from_url(stack["full_redis"])
    queue.flushdb()
    with ModerationClient(stack["full"], max_retries=1) as bounded:
        bounded.submit(["fills the queue"])  # depth 0 -> 1 = MAX_QUEUE_DEPTH
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as full:
            bounded.submit(["refused"])
        assert full.value.code == "queue_full" and full.value.retry_after == 1.0
        assert bounded.retries == 1 and time.monotonic() - started >= 1.0  # slept Retry-After once
    with ModerationClient(stack["full"], max_retries=10) as patient:
        # The queue drains (as a worker would) while the client sleeps Retry-After; then it gets in.
        drain = threading.Timer(1.5, lambda: queue.delete(*broker_lists(queue_for_model("tiny"))))
        drain.start()
        started = time.monotonic()
        accepted = patient.submit(["accepted after the queue drained"])
        drain.join()
        assert accepted.status == "queued" and patient.retries >= 1 and time.monotonic() - started >= 1.0
    queue.flushdb()


# -- the command ------------------------------------------------------------------------------------

def moderation(stack, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MODERATION_URL": stack["api"], "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "client", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_console_script_is_declared():
    import tomllib
    from importlib import import_module
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["moderation"].partition(":")
    assert callable(getattr(import_module(module), name))


def test_moderate_csv_keeps_every_row_in_order_with_bad_rows_reported(stack, client, tmp_path):
    source = tmp_path / "comments.csv"
    rows = [{"comment_id": f"c{i}", "text": text, "author": "x"} for i, text in enumerate(TEXTS * 3)]
    rows.insert(5, {"comment_id": "empty", "text": "  ", "author": "x"})
    rows.insert(9, {"comment_id": "long", "text": "z" * (MAX_CHARS + 1), "author": "x"})
    rows.insert(12, {"comment_id": "multiline", "text": "line one,\n\"quoted\" line two", "author": "x"})
    with source.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["comment_id", "text", "author"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "results.jsonl"
    run = moderation(stack, "moderate", str(source), "--column", "text", "--id-column", "comment_id", "-o", str(out),
                     "--batch-size", "3", "--concurrency", "4", "--no-progress")
    assert run.returncode == 1, run.stderr  # 1: some rows failed (reported in the output)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [r["comment_id"] for r in rows]
    assert [r["row"] for r in records] == list(range(1, len(rows) + 1))
    by_id = {r["id"]: r for r in records}
    assert by_id["empty"]["error"]["code"] == "empty_text" and by_id["empty"]["flagged"] is None
    assert by_id["long"]["error"]["code"] == "text_too_long" and str(MAX_CHARS) in by_id["long"]["error"]["message"]
    expected = {text: client.moderate(text)[0].to_json() for text in {r["text"] for r in rows[:5]} | {rows[12]["text"]}}
    for row, record in zip(rows, records):
        if row["text"] in expected:
            assert record["error"] is None and same_result(record, expected[row["text"]]), row
    flagged = sum(1 for r in records if r["flagged"])
    assert f"flagged        {flagged}" in run.stderr and "failed         2  (" in run.stderr
    assert "empty_text 1" in run.stderr and "text_too_long 1" in run.stderr and "elapsed" in run.stderr
    for label in ("hate", "harassment", "violence"):
        count = sum(1 for r in records if r["categories"] and r["categories"][label])
        assert f"    {label:<13}{count}" in run.stderr


def test_a_job_past_max_request_tokens_is_split_until_it_fits(stack, client):
    """A 413 request_too_large is the job's size, not its rows' fault: the bulk runner halves the job."""
    rows = [Row(i, i + 1, f"r{i}", text) for i, text in enumerate(TEXTS)]  # 4-6 tokens each, ~55 in all
    out = io.StringIO()
    with ModerationClient(stack["budget"], timeout=20) as budget_client:
        moderate_rows(budget_client, rows, out, batch_size=MAX_ITEMS, concurrency=2)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in records] == [row.id for row in rows]
    assert all(r["error"] is None for r in records), [r["error"] for r in records if r["error"]]
    for text, record in zip(TEXTS, records):
        assert same_result(record, client.moderate(text)[0].to_json()), text
    metrics = requests.get(stack["budget"] + "/metrics", timeout=5).text
    assert re.search(r'moderation_requests_rejected_total\{reason="too_large"\} [1-9]', metrics), "no job was split"


def test_moderate_jsonl_with_field_and_broken_lines(stack, tmp_path):
    source = tmp_path / "chat.jsonl"
    lines = [json.dumps({"msg": text, "user": i}) for i, text in enumerate(TEXTS)]
    lines[2] = "{not json"
    lines[4] = json.dumps({"msg": 42})
    lines[6] = json.dumps({"other": "no msg field"})
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    run = moderation(stack, "moderate", str(source), "--field", "msg", "-o", str(out), "--no-progress",
                     "--include-text")
    assert run.returncode == 1, run.stderr
    records = read_jsonl(out)
    assert [r["id"] for r in records] == list(range(1, len(TEXTS) + 1))  # no id field: the line number
    codes = {r["row"]: r["error"]["code"] for r in records if r["error"]}
    assert codes == {3: "invalid_json", 5: "not_a_string", 7: "missing_text"}
    assert records[0]["text"] == TEXTS[0] and records[0]["flagged"] in (True, False)


def test_plain_text_from_stdin_to_stdout(stack):
    run = moderation(stack, "moderate", "-", "--no-progress", stdin="\n".join(TEXTS) + "\n\n")
    assert run.returncode == 1, run.stderr  # the last, empty line is reported as a failure
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["row"] for r in records] == list(range(1, len(TEXTS) + 2))
    assert all(r["error"] is None for r in records[:-1]) and records[-1]["error"]["code"] == "empty_text"
    assert "moderation summary" in run.stderr and "output         stdout" in run.stderr


def test_interrupted_run_resumes_without_duplicates(stack, tmp_path):
    total = 1500
    source = tmp_path / "many.txt"
    source.write_text("".join(f"{TEXTS[i % len(TEXTS)]} {i}\n" for i in range(total)))
    out = tmp_path / "many.jsonl"
    env = {**os.environ, "MODERATION_URL": stack["api"], "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, "-m", "client", "moderate", str(source), "-o", str(out),
                              "--batch-size", "4", "--concurrency", "2"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: out.exists() and out.read_text().count("\n") >= 40, timeout=60, what="40 rows written")
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    assert "INTERRUPTED" in stderr and "moderating:" in stderr  # the progress bar ran
    done_first = read_jsonl(out)
    assert 40 <= len(done_first) < total
    assert [r["row"] for r in done_first] == list(range(1, len(done_first) + 1))
    with out.open("a") as handle:  # as if killed mid-write: a cut-off last line
        handle.write('{"id": 99999, "row": 99')
    second = moderation(stack, "moderate", str(source), "-o", str(out), "--batch-size", "16", "--no-progress")
    assert second.returncode == 0, second.stderr
    records = read_jsonl(out)
    assert [r["row"] for r in records] == list(range(1, total + 1))  # every row once, in order
    assert records[:len(done_first)] == done_first
    assert f"({len(done_first)} from earlier runs, {total - len(done_first)} this run)" in second.stderr
    again = moderation(stack, "moderate", str(source), "-o", str(out), "--no-progress")
    assert again.returncode == 0 and len(read_jsonl(out)) == total and f"({total} from earlier runs, 0" in again.stderr
    fresh = moderation(stack, "moderate", str(source), "-o", str(out), "--no-progress", "--overwrite")
    assert fresh.returncode == 0 and f"(0 from earlier runs, {total} this run)" in fresh.stderr
    assert [r["row"] for r in read_jsonl(out)] == list(range(1, total + 1))


def test_check_prints_the_verdict(stack, client):
    run = moderation(stack, "check", TEXTS[1], TEXTS[0])
    assert run.returncode == 0, run.stderr
    expected = client.moderate([TEXTS[1], TEXTS[0]])
    verdicts = [line.split()[0] for line in run.stdout.splitlines() if not line.startswith(" ")]
    assert verdicts == ["FLAGGED" if result.flagged else "ok" for result in expected]
    assert "(threshold 0.40)" in run.stdout  # hate's threshold, from /models
    as_json = json.loads(moderation(stack, "check", TEXTS[1], "--json").stdout)
    assert same_result(as_json[0], expected[0].to_json())


def test_status_shows_readiness_workers_and_queue(stack):
    run = moderation(stack, "status")
    assert run.returncode == 0, run.stderr
    assert "ready" in run.stdout.splitlines()[0]
    line = next(line for line in run.stdout.splitlines() if line.startswith("tiny"))
    # default model, 1 live worker, empty queue; texts/s only where the server has GET /queue
    assert line.split()[1:5] == ["*", "1", "0", "0.0s"]
    data = json.loads(moderation(stack, "status", "--json").stdout)
    assert data["ready"] is True and data["models"][0]["live_workers"] == 1


def test_status_when_the_service_is_not_ready(stack):
    run = moderation({**stack, "api": stack["full"]}, "status")  # no worker serves that Redis database
    assert run.returncode == 1 and "NOT READY" in run.stdout and "no live worker" in run.stdout


def test_unreachable_service_and_unknown_model_stop_with_a_message(stack, tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("hello\n")
    # Unreachable: 3 (the service failed; resume later), whichever command, as docs/clients.md says.
    for command in (["check", "hello"], ["status"], ["moderate", str(source), "--no-progress"]):
        run = moderation({**stack, "api": "http://127.0.0.1:9"}, "--max-retries", "1", *command)
        assert run.returncode == 3 and "127.0.0.1:9" in run.stderr, (command, run.returncode, run.stderr)
    # A request the service refuses outright is the caller's to fix: 4, whichever command (2 is bad usage).
    run = moderation(stack, "moderate", str(source), "--model", "nope", "--no-progress")
    assert run.returncode == 4 and "nope" in run.stderr and "STOPPED" in run.stderr, (run.returncode, run.stderr)
    run = moderation(stack, "check", "hello", "--model", "nope")
    assert run.returncode == 4 and "nope" in run.stderr, (run.returncode, run.stderr)
    for command in (["check", "hello"], ["moderate", str(source), "--no-progress"]):  # a wrong API key: 4 too
        run = moderation({**stack, "api": stack["limited"]}, "--api-key", "wrong", *command)
        assert run.returncode == 4 and "API key" in run.stderr, (command, run.returncode, run.stderr)
    run = moderation(stack, "check")  # no text: argparse refuses the command line
    assert run.returncode == 2 and "usage:" in run.stderr, (run.returncode, run.stderr)


def test_a_resumed_run_whose_output_holds_failed_rows_exits_1(stack, tmp_path):
    source = tmp_path / "c.txt"
    source.write_text("".join(f"{text}\n" for text in TEXTS) + "  \n")  # the last row is empty: it fails
    out = tmp_path / "c.jsonl"
    first = moderation(stack, "moderate", str(source), "-o", str(out), "--no-progress")
    assert first.returncode == 1, first.stderr
    # Nothing left to do, but the output still holds the failed row: 1 again, as the summary says.
    again = moderation(stack, "moderate", str(source), "-o", str(out), "--no-progress")
    assert again.returncode == 1, again.stderr
    assert f"({len(TEXTS) + 1} from earlier runs, 0 this run)" in again.stderr and "failed         1" in again.stderr
    assert len(read_jsonl(out)) == len(TEXTS) + 1


def test_a_failing_service_stops_the_run_instead_of_failing_rows(stack, tmp_path):
    import redis
    redis.Redis.from_url(stack["full_redis"]).flushdb()
    source = tmp_path / "b.txt"
    source.write_text("".join(f"{text}\n" for text in TEXTS))
    out = tmp_path / "b.jsonl"
    # No worker serves that API's queue: the first job never finishes, the next finds the queue full.
    run = moderation({**stack, "api": stack["full"]}, "--max-retries", "1", "moderate", str(source), "-o", str(out),
                     "--batch-size", "2", "--concurrency", "2", "--job-timeout", "2", "--no-progress")
    assert run.returncode == 3, run.stderr
    assert "STOPPED, the service failed" in run.stderr and "run the same command again to resume" in run.stderr
    assert out.read_text() == ""  # no row is marked failed for the service's fault
    redis.Redis.from_url(stack["full_redis"]).flushdb()


def test_retry_after_takes_seconds_or_an_http_date():
    from email.utils import formatdate

    from client.client import parse_retry_after
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 8 <= parse_retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10


def test_queue_from_metrics_parses_the_gauges():
    text = ('# HELP moderation_queue_depth x\nmoderation_queue_depth{queue="q1"} 3.0\n'
            'moderation_queue_oldest_job_age_seconds{queue="q1"} 1.5\n')
    assert queue_from_metrics(text) == {"q1": {"depth": 3.0, "oldest_job_age_seconds": 1.5}}


def test_duplicate_ids_are_refused_before_anything_is_sent(tmp_path):
    from client.rows import InputError, read_rows
    source = tmp_path / "dup.csv"
    source.write_text("id,text\na,hello\nb,there\na,again\n")
    with pytest.raises(InputError, match="'a' appears on rows 1 and 3"):
        read_rows(str(source), "csv", id_column="id")
    with pytest.raises(InputError, match="column 'body' is not in the CSV header"):
        read_rows(str(source), "csv", column="body")


def test_jobs_stay_under_the_body_size_limit():
    from client.bulk import MAX_JOB_BYTES, plan_jobs
    from client.rows import Row
    rows = [Row(i, i + 1, i + 1, "é" * 20_000) for i in range(40)]  # 20k chars, 120 kB of JSON each
    jobs = plan_jobs(rows, batch_size=32)
    assert [row for job in jobs for row in job] == rows
    assert all(sum(len(json.dumps(r.text).encode()) for r in job) <= MAX_JOB_BYTES for job in jobs)
    assert len(plan_jobs(rows[:5], batch_size=2)) == 3
