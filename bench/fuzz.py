"""Fuzz the live API with schemathesis, driven by its own /openapi.json.

    python -m bench.fuzz                       # private stack (Redis, tiny-model worker, gunicorn), long run
    python -m bench.fuzz --url http://127.0.0.1:5000 --max-examples 2000 [--api-key KEY]

tests/test_fuzz.py runs a shorter one in the suite with the same command and report reading.
Exit status: 0 when schemathesis found nothing and no response was >= 500.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Checks that hold for this API. `all` also passes today; these are the ones the suite insists on.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection,positive_data_acceptance,unsupported_method,ignored_auth")
# Settings that keep every generated job cheap and every wait short, so /v1/moderations never times out.
FUZZ_ENV = {"MAX_WAIT_SECONDS": "2", "MODERATIONS_TIMEOUT": "30", "MAX_BATCH_ITEMS": "16",
            "MAX_TEXT_CHARS": "500", "BATCH_MAX_WAIT_MS": "5"}
# positive_data_acceptance's defaults plus 422: a schema-valid request the API refuses for its state, not its
# shape, as 409 is (an Idempotency-Key reused with another body; generated keys repeat across cases).
POSITIVE_STATUSES = ("2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx")
_STATUS_SAMPLE = re.compile(r'^moderation_http_requests_total\{([^}]*)\}\s+([0-9.e+]+)$')


@dataclass
class FuzzReport:
    generated: int
    failures: list
    errors: list
    exit_code: int
    seed: int | None

    @classmethod
    def read(cls, path: Path) -> FuzzReport:
        data = json.loads(path.read_text())
        return cls(generated=data["test_cases"]["generated"], failures=data["failures"], errors=data["errors"],
                   exit_code=data["exit_code"], seed=data.get("seed"))


def schemathesis_command(api_url: str, report_json: Path, max_examples: int, seed: int | None = None,
                         api_key: str | None = None, max_time: int | None = None,
                         config_file: Path | None = None) -> list[str]:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    command = [cli, *(("--config-file", str(config_file)) if config_file else ()),
               "run", f"{api_url}/openapi.json", "--checks", CHECKS, "--max-examples", str(max_examples),
               "--report", "json", "--report-json-path", str(report_json), "--no-color",
               "--request-timeout", "40", "--workers", "2", "--generation-database", ":memory:"]
    if seed is not None:
        command += ["--seed", str(seed)]
    if api_key:
        command += ["--header", f"Authorization: Bearer {api_key}"]
    if max_time:
        command += ["--max-time", str(max_time)]
    return command


def status_counts(api_url: str) -> dict[int, float]:
    """Responses the API itself counted, by status (moderation_http_requests_total, all endpoints)."""
    text = urllib.request.urlopen(f"{api_url}/metrics", timeout=10).read().decode()
    counts: dict[int, float] = {}
    for line in text.splitlines():
        match = _STATUS_SAMPLE.match(line)
        if match:
            status = int(re.search(r'status="(\d+)"', match.group(1)).group(1))
            counts[status] = counts.get(status, 0) + float(match.group(2))
    return counts


def run_fuzz(api_url: str, workdir: Path, max_examples: int, seed: int | None = None, api_key: str | None = None,
             max_time: int | None = None, timeout: float | None = None) -> tuple[FuzzReport, str]:
    """Run schemathesis in `workdir` (its hypothesis database lands there); returns the report and output."""
    report_json, config_file = workdir / "schemathesis.json", workdir / "schemathesis.toml"
    config_file.write_text("[checks.positive_data_acceptance]\nexpected-statuses = "
                           f"{json.dumps(list(POSITIVE_STATUSES))}\n")
    result = subprocess.run(schemathesis_command(api_url, report_json, max_examples, seed, api_key, max_time,
                                                 config_file), cwd=workdir, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    if not report_json.exists():
        raise RuntimeError(f"schemathesis wrote no report (exit {result.returncode}):\n{output[-4000:]}")
    return FuzzReport.read(report_json), output


def _private_stack(workdir: Path):
    """Redis + tiny-model worker + gunicorn API with FUZZ_ENV, as the test suite starts them."""
    from scripts.launch import RedisServer, base_env, start_api, start_worker
    from tests.tiny_models import build_tiny_model

    redis_server = RedisServer(workdir / "redis").start()
    model = build_tiny_model(workdir / "tiny", ["hate", "harassment", "violence"], multi_label=True)
    env = base_env(redis_server.url, MODELS=f"tiny={model}", API_KEYS="fuzz-key", **FUZZ_ENV)
    worker = start_worker(env, workdir / "worker.log", models=["tiny"])
    api = start_api(env, workdir / "api.log")
    return api, [api, worker, redis_server]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running API (default: start a private stack)")
    parser.add_argument("--api-key", help="Bearer key for the job endpoints (private stack: fuzz-key)")
    parser.add_argument("--max-examples", type=int, default=2000, help="cases per operation and phase")
    parser.add_argument("--max-time", type=int, help="stop after this many seconds")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    stopping = []
    if args.url:
        api_url, api_key = args.url.rstrip("/"), args.api_key
    else:
        api, stopping = _private_stack(workdir)
        api_url, api_key = api.url, args.api_key or "fuzz-key"
    try:
        report, output = run_fuzz(api_url, workdir, args.max_examples, args.seed, api_key, args.max_time)
        server_errors = {s: n for s, n in status_counts(api_url).items() if s >= 500}
    finally:
        for part in stopping:
            part.stop()
    print(output)
    print(f"cases generated: {report.generated}; schemathesis failures: {len(report.failures)}; "
          f"errors: {len(report.errors)}; responses >= 500 counted by the API: {server_errors or 0}; "
          f"logs and report in {workdir}")
    return 0 if report.exit_code == 0 and not server_errors else 1


if __name__ == "__main__":
    sys.exit(main())
