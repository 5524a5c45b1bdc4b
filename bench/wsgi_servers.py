"""gunicorn gthread against granian (WSGI) for the API's hot endpoints: `python -m bench.wsgi_servers`.

One private Redis, no worker (so only the API's own cost is measured), the same app, settings and
process count (2 worker processes, 32 threads each); the two servers are measured in alternating
rounds on the same corpus, so a busy machine's drift hits both alike. Per round and server: accepting
jobs (`POST /generate`, 64 clients) and reading one (`GET /jobs/<id>`, 32 clients): requests/s and
CPU ms per request by process (the server's process tree, Redis, this load generator).

granian is not a requirement of the project (measured, not adopted: bench/results/issue20-ab-busy.md); install
it first, e.g. `pip install --target /tmp/granian granian==2.8.9` and `PYTHONPATH=/tmp/granian`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import load
from bench.corpus import CORPUS_FILE, load_texts
from bench.stack import CpuMeter, service_env
from scripts.launch import ApiServer, Proc, RedisServer, free_port, start_api
from shared.config import BUNDLED_MODEL_PATH


class GranianApi(ApiServer):
    """The API under granian's WSGI interface: 2 processes x 32 blocking threads, as gunicorn's gthread."""

    def __init__(self, env: dict, log_path: Path, workers: int = 2, threads: int = 32):
        self.port = free_port()
        env = {**env, "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="moderation-api-metrics-"),
               **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {})}
        Proc.__init__(self, [sys.executable, "-m", "granian", "--interface", "wsgi", "--factory", "--no-ws",
                             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
                             "--blocking-threads", str(threads), "--log-level", "warning", "api:create_app"],
                      env, log_path)
        self.url = f"http://127.0.0.1:{self.port}"


def read_job(conn: load.Connection, job_id: str) -> bool:
    status, body = conn.request("GET", f"/jobs/{job_id}")
    return status == 200 and body.get("job_id") == job_id


def measure(api: ApiServer, redis: RedisServer, texts: list[str]) -> dict[str, tuple[float, dict]]:
    """{endpoint: (requests/s, CPU ms per request by process)}."""
    out = {}
    load.run_load(api.url, texts[:200], 64, load.enqueue_only)  # warm-up
    with CpuMeter({"API": api.process.pid, "Redis": redis.process.pid}) as cpu:
        result = load.run_load(api.url, texts, 64, load.enqueue_only)
    out["POST /generate"] = (result.rate, cpu.per_item(result.requests), result.failures)
    conn = load.Connection(api.url)
    ids = [conn.request("POST", "/generate", {"input_text": text})[1]["job_id"] for text in texts[:100]]
    reads = [ids[i % len(ids)] for i in range(len(texts))]
    with CpuMeter({"API": api.process.pid, "Redis": redis.process.pid}) as cpu:
        result = load.run_load(api.url, reads, 32, read_job)
    out["GET /jobs/<id>"] = (result.rate, cpu.per_item(result.requests), result.failures)
    redis.client().flushall()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wsgi_servers", description=__doc__)
    parser.add_argument("--texts", type=int, default=2000, help="requests per endpoint, round and server")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    texts = load_texts(CORPUS_FILE, args.texts)
    workdir = Path(tempfile.mkdtemp(prefix="moderation-wsgi-bench-"))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: dict[str, list[dict]] = {"gunicorn gthread": [], "granian wsgi": []}
    with RedisServer(workdir / "redis").start() as redis:
        env = service_env(redis.url, str(BUNDLED_MODEL_PATH), "cpu")
        for round_ in range(args.rounds):
            for server in results:
                log = workdir / f"{server.split()[0]}.log"
                api = start_api(env, log) if server.startswith("gunicorn") else GranianApi(env, log).wait_ready()
                try:
                    results[server].append(measure(api, redis, texts))
                finally:
                    api.stop()
                summary = "; ".join(f"{endpoint}: {rate:,.0f}/s, CPU ms {cpu['API']:.2f} API"
                                    for endpoint, (rate, cpu, _) in results[server][-1].items())
                print(f"round {round_ + 1} {server}: {summary} (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| server | endpoint | requests/s (median) | CPU ms per request: API | Redis | clients | failed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for server, rounds in results.items():
        for endpoint in rounds[0]:
            rates = [r[endpoint][0] for r in rounds]
            cpu = {name: statistics.median(r[endpoint][1][name] for r in rounds) for name in rounds[0][endpoint][1]}
            failed = sum(r[endpoint][2] for r in rounds)
            print(f"| {server} | {endpoint} | {statistics.median(rates):,.0f} | {cpu['API']:.2f} | "
                  f"{cpu['Redis']:.2f} | {cpu['clients']:.2f} | {failed} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
