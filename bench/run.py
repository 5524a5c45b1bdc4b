"""`make bench` (python -m bench.run): throughput and latency of the queue-backed service vs. the model alone
and vs. the original synchronous design, on one model and one corpus. See bench/README.md."""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import inprocess, load, report
from bench.corpus import DEFAULT_DATASET, load_texts
from bench.profile import profiling
from bench.stack import CpuMeter, histogram_totals, rss_mb, service_env
from scripts.launch import RedisServer, start_api, start_worker
from shared import metrics as metric_names
from shared.config import BUNDLED_MODEL_PATH, PROJECT_ROOT, Settings

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
NOTES_MARKER = "## Notes"
TARGETS = {"S/L": 0.8, "S/B (CPU)": 2.5, "S/B (GPU)": 5.0, "light extra ms": 15.0, "enqueue": 1000.0,
           "API RSS MB": 150.0}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("dataset", nargs="?", type=Path, default=DEFAULT_DATASET, help="CSV with a 'tweet' column")
    parser.add_argument("--texts", type=int, default=3000, help="corpus size (distinct texts)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients for S and B")
    parser.add_argument("--enqueue-clients", type=int, default=64)
    parser.add_argument("--light-texts", type=int, default=200, help="requests in the one-client run")
    parser.add_argument("--batch-sizes", default="1,8,16,32,64", help="in-process batch sizes to try for L")
    parser.add_argument("--sweep-texts", type=int, default=1000, help="texts per batch size in the L sweep")
    parser.add_argument("--device", default=os.environ.get("DEVICE", ""), help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure QUANTIZE=int8 in process (CPU only)")
    parser.add_argument("--skip-sync", action="store_true", help="skip row B (the synchronous design)")
    parser.add_argument("--gunicorn-workers", type=int, default=int(os.environ.get("GUNICORN_WORKERS", "2")))
    parser.add_argument("--profile", type=Path, help="py-spy profiles of API and worker during S, into this folder")
    parser.add_argument("--name", help="results file name (default: derived from the CPU/GPU)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for <name>.md")
    parser.add_argument("--base-config", type=Path, help="MiniLM config+vocab folder for the random stand-in model")
    return parser.parse_args(argv)


def resolve_model(args, workdir: Path) -> tuple[str, str]:
    """(path, description): MODEL_PATH, else the bundled model, else a same-config random stand-in."""
    if os.environ.get("MODEL_PATH"):
        return os.environ["MODEL_PATH"], f"MODEL_PATH={os.environ['MODEL_PATH']}"
    if (BUNDLED_MODEL_PATH / "model.safetensors").exists() and not args.base_config:
        return str(BUNDLED_MODEL_PATH), "bundled (build/moderation-minilm)"
    from bench.random_model import build_random_model
    path = build_random_model(workdir / "random-minilm", args.base_config)
    return str(path), "MiniLM-L6 config with random weights (no bundled model or --base-config; throughput is the same)"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def measure_inprocess(args, model_path: str, device: str, texts: list[str]) -> tuple[list[report.Row], dict]:
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    sample = texts[::max(1, len(texts) // args.sweep_texts)][:args.sweep_texts]
    classifier = inprocess.TextClassifier(model_path, device, "", int(os.environ.get("TORCH_THREADS", "0")))
    single = inprocess.single_text_seconds(classifier, texts[:args.light_texts])
    log(f"single text in process: {single * 1000:.1f} ms")
    best, rates = inprocess.best_batch(classifier, sample, sizes)
    log("in-process sweep (texts/s): " + ", ".join(f"{s}: {r:.0f}" for s, r in rates.items()))
    limit, cpu_per_text = inprocess.batched_rate_and_cpu(classifier, texts, best)
    log(f"L = {limit:.0f} texts/s at batch {best}")
    sweep = ", ".join(f"{s}: {r:,.0f}" for s, r in rates.items())
    rows = [report.Row("L", f"model alone, length-sorted batches of {best} (best of {args.batch_sizes})", limit,
                       note=f"CPU ms per text: {cpu_per_text * 1000:.1f}; sweep on {len(sample)} texts, "
                            f"texts/s by batch size: {sweep}"),
            report.Row("L1", "model alone, one text at a time (median)", 1 / single, single)]
    del classifier
    if args.int8 and not device.startswith("cuda"):
        quantized = inprocess.TextClassifier(model_path, device, "int8", int(os.environ.get("TORCH_THREADS", "0")))
        int8_best, int8_rates = inprocess.best_batch(quantized, sample, sizes)
        int8_rate = inprocess.batched_rate(quantized, texts, int8_best)
        log(f"L-int8 = {int8_rate:.0f} texts/s at batch {int8_best}")
        rows.append(report.Row("L-int8", f"as L with QUANTIZE=int8 (dynamic), batch {int8_best}", int8_rate,
                               note="accuracy change: model/artifact/metrics.json"))
        del quantized
    gc.collect()
    return rows, {"limit": limit, "single": single}


def load_row(name: str, what: str, result: load.LoadResult) -> report.Row:
    note = f"{result.requests} requests" + (f", **{result.failures} failed**" if result.failures else "")
    return report.Row(name, what, result.rate, result.percentile(50), result.percentile(95), result.percentile(99),
                      note)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = load_texts(args.dataset, args.texts)
    defaults = Settings()
    workdir = Path(tempfile.mkdtemp(prefix="moderation-bench-"))
    model_path, model_note = resolve_model(args, workdir)
    description = report.machine_description(device, {
        "model": model_note,
        "corpus": f"{len(texts)} distinct tweets from {args.dataset.name}",
        "settings": ", ".join(f"{name}={os.environ.get(name) or default}" for name, default in (
            ("BATCH_MAX_TEXTS", defaults.batch_max_texts), ("BATCH_MAX_TOKENS", defaults.batch_max_tokens),
            ("BATCH_MAX_WAIT_MS", defaults.batch_max_wait_ms), ("TORCH_THREADS", "0 (= CPU quota)"),
            ("GUNICORN_THREADS", 32))) + f", GUNICORN_WORKERS={args.gunicorn_workers}, CACHE_TTL=0, "
        f"clients={args.clients} (enqueue: {args.enqueue_clients}), device={device}",
    })
    log(f"model: {model_note}; device {device}; {len(texts)} texts")

    rows, model = measure_inprocess(args, model_path, device, texts)
    redis = RedisServer(workdir / "redis").start()
    env = service_env(redis.url, model_path, device)
    metrics_url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"
    logs = workdir
    try:
        api = start_api(env, logs / "api.log", workers=args.gunicorn_workers)
        try:
            load.run_load(api.url, texts[:200], args.enqueue_clients, load.enqueue_only)  # warm-up
            with CpuMeter({"API": api.process.pid, "Redis": redis.process.pid}) as enqueue_cpu:
                enqueue = load.run_load(api.url, texts, args.enqueue_clients, load.enqueue_only)
            log(f"enqueue: {enqueue.rate:.0f} jobs/s")
            api_rss = rss_mb(api)
            redis.client().flushall()  # drop the jobs nobody will run
            worker = start_worker(env, logs / "worker.log", timeout=300)
            try:
                load.run_load(api.url, texts[-100:], args.clients, load.moderate_via_queue)  # warm-up
                before = histogram_totals(metrics_url, metric_names.BATCH_SIZE)
                with CpuMeter({"API": api.process.pid, "worker": worker.process.pid, "Redis": redis.process.pid}
                              ) as served_cpu, profiling(args.profile, {"api": api, "worker": worker}):
                    served = load.run_load(api.url, texts, args.clients, load.moderate_via_queue)
                after = histogram_totals(metrics_url, metric_names.BATCH_SIZE)
                mean_batch = (after[0] - before[0]) / max(1.0, after[1] - before[1])
                log(f"S: {served.rate:.0f} texts/s, p50 {served.percentile(50) * 1000:.0f} ms, "
                    f"mean forward pass {mean_batch:.1f} texts")
                api_rss = max(api_rss, rss_mb(api))
                light = load.run_load(api.url, texts[:args.light_texts], 1, load.moderate_via_queue)
                log(f"light load p50 {light.percentile(50) * 1000:.1f} ms")
                worker_rss = rss_mb(worker)
            finally:
                worker.stop()
        finally:
            api.stop()
        sync = None
        if not args.skip_sync:
            sync_api = start_api(env, logs / "sync.log", workers=args.gunicorn_workers,
                                 app="bench.sync_app:create_app()", timeout=300)
            try:
                load.run_load(sync_api.url, texts[-100:], args.clients, load.moderate_sync)  # warm-up
                with CpuMeter({"API+model": sync_api.process.pid}) as sync_cpu:
                    sync = load.run_load(sync_api.url, texts, args.clients, load.moderate_sync)
                log(f"B: {sync.rate:.0f} texts/s")
                sync_rss = rss_mb(sync_api)
            finally:
                sync_api.stop()
    finally:
        redis.stop()

    rows.append(load_row("S", f"queue-backed service, {args.clients} clients, single-text jobs (POST wait=)", served))
    rows[-1].note += (f"; mean forward pass {mean_batch:.1f} texts; CPU ms per text: "
                      f"{served_cpu.per_item_ms(served.requests)}")
    if sync is not None:
        rows.append(load_row("B", f"original design: sync Flask endpoint, one text per request, {args.clients} clients",
                             sync))
        rows[-1].note += (f"; RSS {sync_rss:.0f} MB (gunicorn, all processes); CPU ms per text: "
                          f"{sync_cpu.per_item_ms(sync.requests)}")
    rows.append(load_row("light", "1 client, one text at a time, through the queue", light))
    rows.append(report.Row("enqueue", f"POST /generate, no worker, {args.enqueue_clients} clients (jobs/s)",
                           enqueue.rate, enqueue.percentile(50), enqueue.percentile(95), enqueue.percentile(99),
                           f"{enqueue.requests} jobs" + (f", **{enqueue.failures} failed**" if enqueue.failures
                                                         else "") + f"; CPU ms per job: "
                           f"{enqueue_cpu.per_item_ms(enqueue.requests)}"))
    rows.append(report.Row("memory", "resident memory", note=f"API {api_rss:.0f} MB (gunicorn master + "
                           f"{args.gunicorn_workers} workers), worker {worker_rss:.0f} MB"))

    s_over_b = served.rate / sync.rate if sync else float("nan")
    gpu = device.startswith("cuda")
    extra_ms = (light.percentile(50) - model["single"]) * 1000
    checks = [
        ("S/L", f"{served.rate / model['limit']:.2f}", f">= {TARGETS['S/L']}", served.rate / model["limit"] >= 0.8),
        ("S/B", f"{s_over_b:.2f}" if sync else "skipped", f">= {TARGETS['S/B (GPU)' if gpu else 'S/B (CPU)']}",
         s_over_b >= TARGETS["S/B (GPU)" if gpu else "S/B (CPU)"]),
        ("light-load p50 - single-text model time", f"{extra_ms:.1f} ms", "<= 15 ms", extra_ms <= 15),
        ("enqueue rate", f"{enqueue.rate:,.0f} jobs/s", ">= 1,000 jobs/s", enqueue.rate >= 1000),
        ("API RSS", f"{api_rss:.0f} MB", "<= 150 MB", api_rss <= 150),
        ("failed requests", str(served.failures + light.failures + enqueue.failures + (sync.failures if sync else 0)),
         "0", served.failures + light.failures + enqueue.failures + (sync.failures if sync else 0) == 0),
    ]
    name = args.name or report.machine_name(device)
    document = (f"# Benchmark: {name}\n\n`python -m bench.run {' '.join(argv)}`\n\n{description}\n\n"
                f"{report.table(rows)}\n\n{report.checks_table(checks)}\n")
    print("\n" + document)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{name}.md"
    # Hand-written analysis below NOTES_MARKER (profiles, what would close a gap) survives a re-run.
    if target.exists() and NOTES_MARKER in target.read_text():
        document += "\n" + NOTES_MARKER + target.read_text().split(NOTES_MARKER, 1)[1]
    target.write_text(document)
    shutil.rmtree(workdir / "random-minilm", ignore_errors=True)  # ~90 MB of weights; the logs stay
    log(f"wrote {target} (logs in {workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
