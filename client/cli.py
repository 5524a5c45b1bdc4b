"""`moderation`: moderate a file in bulk, check a text, see the service's state.

    moderation moderate comments.csv --column text -o results.jsonl
    moderation check "some text"
    moderation status
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from client.bulk import FatalError, RefusedError, Tally, moderate_rows
from client.client import DEFAULT_URL, ModerationClient
from client.errors import (
    ClientError,
    JobFailedError,
    JobTimeoutError,
    ModerationError,
    RateLimitedError,
    ServerError,
    ServiceUnreachableError,
)
from client.models import Models, ModerationResult
from client.rows import FORMATS, InputError, detect_format, load_results, read_rows, record_key

# Exit statuses. EXIT_STATUSES is the table docs/clients.md ("Exit status") shows, word for word
# (tests/test_docs_drift.py checks it), and `moderation --help` prints it. 2 is argparse's own status for a
# command line it refuses, so it means "bad usage" only: a request the service refuses is 4, a service that
# fails is 3 (run again later), so a script can tell "fix the call" from "retry".
EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_STATUSES = {
    EXIT_OK: "success: every row moderated (`moderate`), every text moderated (`check`), the service ready "
             "(`status`)",
    EXIT_FAILURES: "`moderate`: some rows of the output file failed, each with its `error` (rows from earlier runs "
                   "count too, as in the summary); `check`: a job failed; `status`: the service is not ready",
    EXIT_USAGE: "bad usage, found before any request: arguments the command refuses, or an input file it cannot "
                "read or use (a CSV column not in its header, duplicate ids, a format it cannot tell)",
    EXIT_UNAVAILABLE: "the service is unreachable or failing: no answer, a 5xx, still 429 or 503 after the retries, "
                      "a job past `--job-timeout`; run the same command again later (`moderate` resumes)",
    EXIT_REFUSED: "the service refused the request: a missing or unknown API key, an unknown model, another 4xx "
                  "for the whole request; fix the call, as running it again unchanged will not help",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); what `moderate` wrote stays, and the next run resumes",
}
# Errors that are the service's fault, not the caller's: what docs/clients.md calls "the service itself fails".
SERVICE_FAILURES = (ServiceUnreachableError, ServerError, RateLimitedError, JobTimeoutError)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _exit_status_help() -> str:
    lines = ["exit status:"]
    for code, meaning in EXIT_STATUSES.items():
        lines += textwrap.wrap(meaning.replace("`", ""), width=96, initial_indent=f"  {code:<5}",
                               subsequent_indent=" " * 7)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moderation", description=__doc__.split("\n\n")[0],
                                     epilog=_exit_status_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("MODERATION_URL") or DEFAULT_URL,
                        help="the service (env MODERATION_URL; default %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("MODERATION_API_KEY") or None,
                        help="Bearer API key (env MODERATION_API_KEY)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    parser.add_argument("--max-retries", type=int, default=8,
                        help="retries of a 429/503 answer or a refused connection, honouring Retry-After (default 8)")
    commands = parser.add_subparsers(dest="command", required=True)

    bulk = commands.add_parser("moderate", help="moderate every row of a CSV, JSONL or text file",
                               description="Moderate every row of a file into a JSONL results file, in input "
                               "order, one line per row (a result or the row's error). Re-running with the "
                               "same output skips the rows it already holds.")
    bulk.add_argument("input", help="a .csv, .jsonl or .txt file (one text per line), or - for stdin")
    bulk.add_argument("-o", "--output", default="-", help="JSONL results file, or - for stdout (default)")
    bulk.add_argument("--format", choices=FORMATS, help="input format (default: from the extension; stdin: txt)")
    bulk.add_argument("--column", help="CSV column holding the text (default: text)")
    bulk.add_argument("--field", help="JSONL field holding the text (default: text)")
    bulk.add_argument("--id-column", "--id-field", dest="id_column",
                      help="column/field with a unique row id written to each result (default: the row number)")
    bulk.add_argument("--model", help="model name (default: the server's default model)")
    bulk.add_argument("--batch-size", type=int, default=32,
                      help="texts per job (default 32; at most the server's MAX_BATCH_ITEMS)")
    bulk.add_argument("--concurrency", type=int, default=4, help="jobs in flight at once (default 4)")
    bulk.add_argument("--job-timeout", type=float, default=600.0, help="seconds to wait for one job (default 600)")
    bulk.add_argument("--include-text", action="store_true", help="copy each row's text into its result")
    bulk.add_argument("--overwrite", action="store_true", help="start the output afresh instead of resuming")
    bulk.add_argument("--no-progress", action="store_true", help="no progress bar")

    check = commands.add_parser("check", help="moderate one or more texts given on the command line")
    check.add_argument("texts", nargs="+", metavar="text")
    check.add_argument("--model", help="model name (default: the server's default model)")
    check.add_argument("--json", action="store_true", help="print the results as JSON")

    status = commands.add_parser("status", help="readiness, models, live workers and queue depth")
    status.add_argument("--json", action="store_true", help="print everything as JSON")
    return parser


# -- moderate ------------------------------------------------------------------------------------------

def _open_output(path: str, overwrite: bool) -> tuple[IO[str], list[dict[str, Any]]]:
    if path == "-":
        return sys.stdout, []
    target = Path(path)
    previous = [] if overwrite else load_results(target)
    return open(target, "w" if overwrite else "a", encoding="utf-8"), previous


def _summary(tally: Tally, total: int, skipped: int, written_now: int, elapsed: float, output: str,
             stopped: str | None) -> str:
    lines = ["", "moderation summary" + (f"  ({stopped}: run the same command again to resume)" if stopped else "")]
    lines.append(f"  input rows     {total}")
    lines.append(f"  in output      {tally.rows}  ({skipped} from earlier runs, {written_now} this run)")
    moderated = tally.rows - tally.failed
    share = f" ({100 * tally.flagged / moderated:.1f}% of {moderated} moderated)" if moderated else ""
    lines.append(f"  flagged        {tally.flagged}{share}")
    for label, count in sorted(tally.categories.items(), key=lambda item: -item[1]):
        lines.append(f"    {label:<13}{count}")
    failures = ", ".join(f"{code} {count}" for code, count in tally.failures.most_common())
    lines.append(f"  failed         {tally.failed}" + (f"  ({failures})" if failures else ""))
    rate = f"  ({written_now / elapsed:.1f} rows/s)" if elapsed > 0 and written_now else ""
    lines.append(f"  elapsed        {elapsed:.1f} s{rate}")
    lines.append(f"  output         {'stdout' if output == '-' else output}")
    return "\n".join(lines)


def cmd_moderate(args: argparse.Namespace, client: ModerationClient) -> int:
    fmt = detect_format(args.input, args.format, args.column, args.field)
    id_column = args.id_column
    rows = read_rows(args.input, fmt, column=args.column or "text", field=args.field or "text", id_column=id_column)
    out, previous = _open_output(args.output, args.overwrite)
    keys = {row.key for row in rows}
    tally = Tally()
    done = set()
    for record in previous:
        key = record_key(record.get("id"), record["row"])
        if key in keys and key not in done:
            done.add(key)
            tally.add(record)
    pending = [row for row in rows if row.key not in done]
    skipped = len(rows) - len(pending)
    batch_size = max(1, min(args.batch_size, client.batch_size()))
    progress = tqdm(total=len(rows), initial=skipped, unit="text", desc="moderating", file=sys.stderr,
                    disable=args.no_progress, dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
    counts = {"flagged": tally.flagged, "failed": tally.failed}

    def on_progress(count: int, record: dict[str, Any]) -> None:
        if record.get("error"):
            counts["failed"] += 1
        elif record.get("flagged"):
            counts["flagged"] += 1
        progress.set_postfix(counts, refresh=False)
        progress.update(count)

    written_now = 0

    def on_record(record: dict[str, Any]) -> None:
        nonlocal written_now
        written_now += 1
        tally.add(record)

    started = time.monotonic()
    stopped, status = None, EXIT_OK
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        moderate_rows(client, pending, out, model=args.model, batch_size=batch_size,
                      concurrency=max(1, args.concurrency), job_timeout=args.job_timeout,
                      include_text=args.include_text, on_record=on_record, on_progress=on_progress)
    except KeyboardInterrupt:
        stopped, status = "INTERRUPTED", EXIT_INTERRUPTED
    except FatalError as exc:
        stopped, status = f"STOPPED, {exc}", EXIT_REFUSED if isinstance(exc, RefusedError) else EXIT_UNAVAILABLE
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    print(_summary(tally, len(rows), skipped, written_now, time.monotonic() - started, args.output, stopped),
          file=sys.stderr)
    if stopped:
        return status
    return EXIT_FAILURES if tally.failed else EXIT_OK


# -- check ---------------------------------------------------------------------------------------------

def _verdict(text: str, result: ModerationResult, thresholds: dict[str, float]) -> str:
    lines = [f"{'FLAGGED' if result.flagged else 'ok':<8} {text[:70]!r}"]
    for label, score in result.category_scores.items():
        mark = "  <- over threshold" if result.categories.get(label) else ""
        threshold = f"  (threshold {thresholds[label]:.2f})" if label in thresholds else ""
        bar = "#" * round(score * 20)
        lines.append(f"  {label:<14}{score:6.3f}  {bar:<20}{threshold}{mark}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace, client: ModerationClient) -> int:
    results = client.moderate(args.texts, model=args.model)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
        return EXIT_OK
    try:
        info = client.models().get(args.model)
    except ModerationError:
        info = None
    thresholds = info.thresholds if info else {}
    print("\n".join(_verdict(text, result, thresholds) for text, result in zip(args.texts, results)))
    return EXIT_OK


# -- status --------------------------------------------------------------------------------------------

_QUEUE_SAMPLE = re.compile(r'^(moderation_queue_depth|moderation_queue_oldest_job_age_seconds)\{[^}]*queue="([^"]*)"'
                           r'[^}]*\}\s+(\S+)', re.MULTILINE)


def queue_from_metrics(text: str) -> dict[str, dict[str, float]]:
    """Queue depth and oldest job age per queue, from the API's Prometheus metrics."""
    queues: dict[str, dict[str, float]] = {}
    for name, queue_name, value in _QUEUE_SAMPLE.findall(text):
        key = "depth" if name == "moderation_queue_depth" else "oldest_job_age_seconds"
        queues.setdefault(queue_name, {})[key] = float(value)
    return queues


def queue_by_model(client: ModerationClient, models: Models) -> dict[str, dict[str, Any]]:
    """Per model: depth, oldest_job_age_seconds, and (from GET /queue, where the server has it)
    texts_per_second; else the queue gauges of /metrics."""
    stats = client.queue_stats()
    if stats is not None:
        return {entry["model"]: entry for entry in stats.get("models", [])}
    gauges = queue_from_metrics(client.metrics_text())
    return {model.name: gauges.get(model.queue, {}) for model in models.models}


def cmd_status(args: argparse.Namespace, client: ModerationClient) -> int:
    readiness = client.readiness()
    models = client.models()
    queues = queue_by_model(client, models)
    if args.json:
        print(json.dumps({"url": client.base_url, "ready": readiness.ready, "readyz": readiness.detail,
                          "default_model": models.default_model,
                          "models": [{"name": m.name, "queue": m.queue, "live_workers": m.live_workers,
                                      **{k: v for k, v in queues.get(m.name, {}).items()
                                         if k not in ("model", "queue", "live_workers")}}
                                     for m in models.models]}, indent=2))
        return EXIT_OK if readiness.ready else EXIT_FAILURES
    state = "ready" if readiness.ready else f"NOT READY: {readiness.reason}"
    print(f"service   {client.base_url}  {state}")
    print(f"{'model':<20}{'live workers':>13}{'queued':>9}{'oldest job':>12}{'texts/s':>10}")
    for model in models.models:
        queue = queues.get(model.name, {})
        depth = f"{queue['depth']:.0f}" if "depth" in queue else "-"
        age = f"{queue['oldest_job_age_seconds']:.1f}s" if "oldest_job_age_seconds" in queue else "-"
        rate = f"{queue['texts_per_second']:.1f}" if "texts_per_second" in queue else "-"
        name = model.name + (" *" if model.name == models.default_model else "")
        workers = model.live_workers if model.live_workers is not None else "-"
        print(f"{name:<20}{workers:>13}{depth:>9}{age:>12}{rate:>10}")
    return EXIT_OK if readiness.ready else EXIT_FAILURES


COMMANDS = {"moderate": cmd_moderate, "check": cmd_check, "status": cmd_status}


def note_pause(seconds: float, budget: str) -> None:
    """The client waits for a spent rate-limit budget (x-ratelimit-* headers): say so, above any progress bar."""
    tqdm.write(f"moderation: rate limit reached (no {budget} left); pausing {seconds:.1f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with ModerationClient(args.url, api_key=args.api_key, timeout=args.timeout,
                              max_retries=max(0, args.max_retries), on_pause=note_pause) as client:
            return COMMANDS[args.command](args, client)
    except (InputError, OSError) as exc:
        print(f"moderation: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FatalError as exc:
        print(f"moderation: stopped: {exc}", file=sys.stderr)
        return EXIT_REFUSED if isinstance(exc, RefusedError) else EXIT_UNAVAILABLE
    except SERVICE_FAILURES as exc:
        print(f"moderation: the service failed: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except JobFailedError as exc:
        print(f"moderation: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    except ClientError as exc:  # a 4xx other than 429: the request itself is refused
        print(f"moderation: the service refused the request: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ModerationError as exc:  # an answer the client cannot use: the service misbehaves
        print(f"moderation: the service failed: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
