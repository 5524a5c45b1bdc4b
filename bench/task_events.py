"""What Celery's task events per job cost the worker (worker/task_events.py): texts/s and worker CPU per text
with WORKER_SEND_TASK_EVENTS on and off, the real `python -m worker` on the bundled model.

    python -m bench.task_events [--jobs 8000] [--rounds 2] [--out bench/results/task_events.md]

Each run: a private Redis (the job store and the broker), --jobs one-text jobs queued before the worker
starts (a record with the text's token count and a task message each, as the API writes them; distinct
corpus texts, cycled, with the result cache off), so the worker runs on a full queue from its first
batch; then `python -m worker` (the service's defaults: engine auto, BATCH_MAX_TEXTS 32) and, as
celery-exporter or Flower would, one Celery event receiver on the broker for the whole run, in both
modes (it counts the task events that arrive). The worker's /metrics (moderation_texts_processed_total)
and its CPU time are read every 0.5 s; the rate is taken from the first reading past 10% of the jobs to
the last job (model load and warm-up excluded). Runs alternate off, on, off, on (--rounds pairs), each
worker freshly started. Prints a Markdown report and appends it to --out.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

from api.tokens import TokenCounter
from bench.corpus import CORPUS_FILE, load_texts
from bench.stack import cpu_seconds, service_env
from scripts.launch import RedisServer, start_worker
from shared.celery_app import make_celery
from shared.config import BUNDLED_MODEL_PATH, PROJECT_ROOT, load_settings
from shared.jobs import JobRecord, JobStore
from shared.queues import MODERATE_TASK, queue_for_model
from tests.celery_events import EventLog

RESULTS_FILE = PROJECT_ROOT / "bench" / "results" / "task_events.md"
MODEL = "default"
QUEUE = queue_for_model(MODEL)


def texts_processed(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(float(match.group(1)) for match in
               re.finditer(r"^moderation_texts_processed_total\{.*\} ([0-9.e+-]+)$", text, re.M))


def queue_jobs(store: JobStore, celery, texts: list[str], tokens: list[int], jobs: int) -> None:
    for i in range(jobs):
        job_id = str(uuid.uuid4())
        store.create(JobRecord(job_id=job_id, model=MODEL, queue=QUEUE, texts=[texts[i % len(texts)]],
                               text_tokens=[tokens[i % len(texts)]]))
        celery.send_task(MODERATE_TASK, args=[job_id, MODEL], queue=QUEUE, task_id=job_id,
                         headers={"enqueued_at": time.time()})


def one_run(redis: RedisServer, model_path: str, texts: list[str], tokens: list[int], jobs: int, events_on: bool,
            logs: Path, name: str) -> dict:
    client = redis.client()
    client.flushall()
    env = service_env(redis.url, model_path, "cpu", WORKER_SEND_TASK_EVENTS="true" if events_on else "false")
    settings = load_settings(env)
    celery = make_celery(settings)
    queue_jobs(JobStore(client, 3600), celery, texts, tokens, jobs)
    metrics_url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"
    load_before = os.getloadavg()[0]
    client.config_resetstat()
    with EventLog(celery) as log:
        time.sleep(1)  # the receiver subscribes before the worker sends anything
        worker = start_worker(env, logs / f"{name}.log", models=[MODEL])
        try:
            samples = []  # (monotonic, worker CPU s, texts processed)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                samples.append((time.monotonic(), cpu_seconds(worker.process.pid), texts_processed(metrics_url)))
                if samples[-1][2] >= jobs:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError(f"{name}: {samples[-1][2]:.0f} of {jobs} texts after 900 s")
            time.sleep(3)  # the last batch's events (flushed on the worker's next loop turn) and a heartbeat
            events = log.task_event_counts()
        finally:
            worker.stop()
    load_after = os.getloadavg()[0]
    publishes = client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
    start = next(sample for sample in samples if sample[2] >= jobs * 0.1)
    end = samples[-1]
    texts_done = end[2] - start[2]
    return {"name": name, "events": "on" if events_on else "off", "jobs": jobs,
            "rate": texts_done / (end[0] - start[0]), "cpu_ms": (end[1] - start[1]) * 1000 / texts_done,
            "seconds": end[0] - start[0], "task_events": events, "load": (load_before, load_after),
            "publishes": publishes}


def events_cpu_per_job(celery, jobs: int) -> float:
    """CPU microseconds this process spends on one one-text job's events as the worker builds and sends
    them (worker/task_events.py's fields, Celery's EventDispatcher buffering the `task` group and publishing
    `task.multi` groups of up to 24 to the broker): a bound on the worker's cost independent of the load."""
    from types import SimpleNamespace

    from worker.pipeline import BatchReport
    from worker.task_events import outcome_events, received_fields

    def request(job_id):
        return SimpleNamespace(id=job_id, name=MODERATE_TASK, argsrepr=f"[{job_id!r}, {MODEL!r}]", kwargsrepr="{}",
                               root_id=job_id, parent_id=None, request_dict={}, eta=None, expires=None,
                               delivery_info={"routing_key": QUEUE})
    requests = [request(str(uuid.uuid4())) for _ in range(jobs)]
    result = [{"flagged": False, "categories": {}, "category_scores": {}}]
    batch = BatchReport(done=[r.id for r in requests], outcomes={r.id: ("succeeded", result) for r in requests})
    with celery.connection_for_write() as connection:
        dispatcher = celery.events.Dispatcher(connection, hostname="bench@localhost", buffer_group=["task"])
        started = time.process_time()
        for r in requests:
            dispatcher.send("task-received", **received_fields(r))
        for r in requests:
            dispatcher.send("task-started", uuid=r.id)
        for event_type, fields in outcome_events(requests, batch, 0.05):
            dispatcher.send(event_type, **fields)
        dispatcher.flush()
        spent = time.process_time() - started
        dispatcher.close()
    return spent * 1e6 / jobs


def report(runs: list[dict], micro_us: float, args) -> str:
    by_mode = {mode: [run for run in runs if run["events"] == mode] for mode in ("off", "on")}
    median_rate = {mode: statistics.median(run["rate"] for run in rows) for mode, rows in by_mode.items()}
    median_cpu = {mode: statistics.median(run["cpu_ms"] for run in rows) for mode, rows in by_mode.items()}
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: task events off vs on "
        f"(`python -m bench.task_events --jobs {args.jobs} --rounds {args.rounds}`)",
        "",
        f"{os.cpu_count()} CPUs, **shared and busy** (other engineers' test suites and builds ran beside it: see "
        "the load averages); the real worker on the bundled model (engine auto, the service's defaults), "
        f"{args.jobs} one-text jobs queued before each worker started, a Celery event receiver on the broker "
        "in every run. Rate: from 10% of the jobs done to the last; CPU: the worker process's, per text; "
        "PUBLISHes: all of the run's on the private Redis (heartbeats, remote control, events).",
        "",
        "| run | events | texts/s | worker CPU ms/text | measured over | task events received "
        "| Redis PUBLISHes | load avg (start, end) |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for run in runs:
        received = ", ".join(f"{name} {count}" for name, count in run["task_events"].items()) or "none"
        lines.append(f"| {run['name']} | {run['events']} | {run['rate']:.0f} | {run['cpu_ms']:.2f} | "
                     f"{run['seconds']:.0f} s | {received} | {run['publishes']} | "
                     f"{run['load'][0]:.1f}, {run['load'][1]:.1f} |")
    rate_change = (median_rate["on"] / median_rate["off"] - 1) * 100
    cpu_change = (median_cpu["on"] / median_cpu["off"] - 1) * 100
    lines += [
        "",
        f"Median: events off {median_rate['off']:.0f} texts/s ({median_cpu['off']:.2f} worker CPU ms/text), "
        f"events on {median_rate['on']:.0f} texts/s ({median_cpu['on']:.2f} ms/text): "
        f"{rate_change:+.1f}% texts/s, {cpu_change:+.1f}% worker CPU per text.",
        "",
        f"In-process bound (`events_cpu_per_job`): building and sending one one-text job's three events "
        f"(received, started, succeeded) through Celery's EventDispatcher to this Redis costs {micro_us:.0f} us "
        f"of CPU per job, {micro_us / 10 / median_cpu['off']:.1f}% of the worker's {median_cpu['off']:.2f} ms "
        "per text with events off.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.task_events", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=8000, help="one-text jobs per run")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (off, then on)")
    parser.add_argument("--out", type=Path, default=RESULTS_FILE, help="the Markdown file the report is appended to")
    args = parser.parse_args(argv)
    model_path = os.environ.get("MODEL_PATH") or str(BUNDLED_MODEL_PATH)
    texts = load_texts(CORPUS_FILE)
    # Each text's token count, as the API stores it with the job (the worker plans its slices by it).
    tokens = TokenCounter(model_path).count(texts)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-task-events-") as tmp:
        logs = Path(tmp)
        with RedisServer(logs / "redis").start() as redis:
            for round_ in range(1, args.rounds + 1):
                for events_on in (False, True):
                    name = f"{'on' if events_on else 'off'}-{round_}"
                    run = one_run(redis, model_path, texts, tokens, args.jobs, events_on, logs, name)
                    print(f"[task-events] {name}: {run['rate']:.0f} texts/s, {run['cpu_ms']:.2f} worker CPU ms/text, "
                          f"events {run['task_events']}, load {run['load']}", flush=True)
                    runs.append(run)
            micro_us = events_cpu_per_job(make_celery(load_settings({"REDIS_URL": redis.url})), 20000)
            print(f"[task-events] in-process: {micro_us:.0f} us of CPU per job's events", flush=True)
    text = report(runs, micro_us, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
