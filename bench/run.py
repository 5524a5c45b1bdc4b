"""`make bench` (python -m bench.run): in one run, side by side, the in-process engine sweep, the model alone
(L), the queue-backed service with single-text (S) and 32-text jobs (S32), the original synchronous design
(B), light load, the enqueue rate, CPU per job in API and worker, and memory. `--quick` for a short run."""

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
from bench.corpus import CORPUS_FILE, load_texts
from bench.profile import profiling
from bench.stack import CpuMeter, histogram_buckets, histogram_totals, pass_sizes, rss_mb, service_env
from scripts.launch import RedisServer, start_api, start_worker
from shared import metrics as metric_names
from shared.config import BUNDLED_MODEL_PATH, PROJECT_ROOT, Settings, get_settings
from worker.inference import cpu_quota
from worker.runtime import batch_concurrency, pass_threads

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
NOTES_MARKER = "## Notes"
# issue 20's targets (quiet 2 cores, bundled model, cache off); the GPU keeps S/B >= 5. The enqueue rate and
# API RSS are issue 9's, still shown.
TARGETS = {"S/B": 3.0, "S/B (GPU)": 5.0, "S/L": 0.35, "S32/L": 0.9, "light extra ms": 6.0, "API CPU ms": 1.0,
           "worker extra CPU ms": 1.0, "enqueue": 1500.0, "API RSS MB": 150.0}
CPU_COLUMNS = ("API", "worker", "Redis", "clients", "API+model")  # the CPU table's process columns, in order
QUICK = {"texts": 600, "sweep_texts": 300, "light_texts": 60, "batch_sizes": "1,16,32"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("corpus", nargs="?", type=Path, default=CORPUS_FILE,
                        help="corpus file, one JSON string per line (default: the committed tweets)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()))
    parser.add_argument("--texts", type=int, default=3000, help="corpus size (distinct texts)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients for S, S32 and B")
    parser.add_argument("--job-texts", type=int, default=32, help="texts per job in row S32")
    parser.add_argument("--enqueue-clients", type=int, default=64)
    parser.add_argument("--light-texts", type=int, default=200, help="requests in the one-client run")
    parser.add_argument("--batch-sizes", default="1,16,32,64", help="in-process batch sizes (sweep and L)")
    parser.add_argument("--sweep-texts", type=int, default=1000, help="texts per batch size in the sweeps")
    parser.add_argument("--device", default=os.environ.get("DEVICE", ""), help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--skip-sweep", action="store_true", help="skip the engine sweep")
    parser.add_argument("--skip-sync", action="store_true", help="skip row B (the synchronous design)")
    parser.add_argument("--gunicorn-workers", type=int, default=int(os.environ.get("GUNICORN_WORKERS", "2")))
    parser.add_argument("--profile", type=Path, help="py-spy profiles of API and worker during S, into this folder")
    parser.add_argument("--name", help="results file name (default: derived from the CPU/GPU)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for <name>.md")
    parser.add_argument("--base-config", type=Path, help="MiniLM config+vocab folder for the random stand-in model")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    return args


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


def engine_sweep_table(args, model_path: str, texts: list[str]) -> str:
    """bench/engines.py's sweep (texts/s per engine x precision and batch size), as Markdown."""
    from bench.engines import engine_sweep, sweep_table
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    sample = texts[::max(1, len(texts) // args.sweep_texts)][:args.sweep_texts]
    rows = engine_sweep(model_path, sample, sizes, int(os.environ.get("TORCH_THREADS", "0")),
                        get_settings().engine_cache_dir)
    log("engine sweep: " + "; ".join(f"{row['variant']}: " + ", ".join(f"{s}: {r:.0f}" for s, r in row["rates"].items())
                                     for row in rows))
    return f"{len(sample)} texts, length-sorted passes (the worker's code path)\n\n" + sweep_table(rows, sizes)


def measure_inprocess(args, model_path: str, device: str, texts: list[str]) -> tuple[list[report.Row], dict]:
    """L (the worker's default engine, best batch size) and L1 (one text at a time)."""
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    sample = texts[::max(1, len(texts) // args.sweep_texts)][:args.sweep_texts]
    classifier = inprocess.load_classifier(model_path, device)
    engine = f"{classifier.engine} {classifier.precision}"
    single = inprocess.single_text_seconds(classifier, texts[:args.light_texts])
    log(f"single text in process ({engine}): {single * 1000:.1f} ms")
    best, rates = inprocess.best_batch(classifier, sample, sizes)
    limit, cpu_per_text = inprocess.batched_rate_and_cpu(classifier, texts, best)
    log(f"L = {limit:.0f} texts/s at batch {best}; sweep " + ", ".join(f"{s}: {r:.0f}" for s, r in rates.items()))
    rows = [report.Row("L", f"model alone, default engine ({engine}), length-sorted batches of {best}", limit,
                       note=f"CPU ms per text: {cpu_per_text * 1000:.2f}; texts/s by batch size on {len(sample)} "
                            "texts: " + ", ".join(f"{s}: {r:,.0f}" for s, r in rates.items())),
            report.Row("L1", f"model alone, one text at a time (median), {engine}", 1 / single, single)]
    del classifier
    gc.collect()
    return rows, {"limit": limit, "single": single, "cpu_per_text": cpu_per_text, "engine": engine}


def forward_cpu_at(model_path: str, device: str, texts: list[str], sizes: dict[int, int]) -> float:
    """CPU seconds per text of the model alone in forward passes of the sizes the service ran ({size: passes};
    the worker exposes forward-pass wall time only, and onnx's threads make CPU differ from it), on as many
    threads per pass as the worker's."""
    order = [size for size, passes in sorted(sizes.items()) for _ in range(passes)]
    # Interleave small and large passes so that a corpus shorter than the service's run sees every size.
    group_sizes = [size for pair in zip(order, reversed(order)) for size in pair][:len(order)] or [1]
    settings = get_settings()  # the threads per pass the worker ran with (worker/runtime.py)
    threads = pass_threads(settings, batch_concurrency(settings, device))
    classifier = inprocess.load_classifier(model_path, device, threads=threads)
    try:
        return inprocess.grouped_cpu_per_text(classifier, texts, group_sizes,
                                               get_settings().batch_max_tokens or classifier.token_budget)
    finally:
        del classifier
        gc.collect()


def load_row(name: str, what: str, result: load.LoadResult, texts_per_request: int = 1) -> report.Row:
    note = f"{result.requests} requests" + (f", **{result.failures} failed**" if result.failures else "")
    return report.Row(name, what, result.rate * texts_per_request, result.percentile(50), result.percentile(95),
                      result.percentile(99), note)


def multi_text_jobs(corpus: Path, texts: list[str], job_texts: int, clients: int) -> list[list[str]]:
    """Jobs of `job_texts` distinct texts, up to four per client as far as the corpus file goes (at least
    the run's own texts), so S32's rate is a steady state rather than one wave's ramp and tail (600 texts
    are 19 jobs for 32 clients). No text repeats: the worker reads a text once per batch, and a batch
    holds several jobs."""
    everything = load_texts(corpus)
    count = max(len(texts), min(len(everything), 4 * clients * job_texts)) // job_texts * job_texts
    pool = everything[:count]
    return [pool[i:i + job_texts] for i in range(0, len(pool), job_texts)]


def measure_service(args, env: dict, redis, texts: list[str], logs: Path) -> dict:
    """Enqueue (no worker), then S, S32 and light load against one API and one worker."""
    out: dict = {}
    metrics_url = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"
    api = start_api(env, logs / "api.log", workers=args.gunicorn_workers)
    try:
        load.run_load(api.url, texts[:200], args.enqueue_clients, load.enqueue_only)  # warm-up
        with CpuMeter({"API": api.process.pid, "Redis": redis.process.pid}) as out["enqueue_cpu"]:
            out["enqueue"] = load.run_load(api.url, texts, args.enqueue_clients, load.enqueue_only)
        log(f"enqueue: {out['enqueue'].rate:.0f} jobs/s, CPU ms per job "
            f"{out['enqueue_cpu'].per_item_ms(out['enqueue'].requests)}")
        out["api_rss"] = rss_mb(api)
        redis.client().flushall()  # drop the jobs nobody will run
        worker = start_worker(env, logs / "worker.log", timeout=300)
        try:
            load.run_load(api.url, texts[-100:], args.clients, load.moderate_via_queue)  # warm-up
            before = histogram_totals(metrics_url, metric_names.BATCH_SIZE)
            sizes_before = histogram_buckets(metrics_url, metric_names.BATCH_SIZE)
            with CpuMeter({"API": api.process.pid, "worker": worker.process.pid, "Redis": redis.process.pid}
                          ) as out["served_cpu"], profiling(args.profile, {"api": api, "worker": worker}):
                out["served"] = load.run_load(api.url, texts, args.clients, load.moderate_via_queue)
            after = histogram_totals(metrics_url, metric_names.BATCH_SIZE)
            out["pass_sizes"] = pass_sizes(sizes_before, histogram_buckets(metrics_url, metric_names.BATCH_SIZE))
            out["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
            log(f"S: {out['served'].rate:.0f} texts/s, p50 {out['served'].percentile(50) * 1000:.0f} ms, mean "
                f"forward pass {out['mean_batch']:.1f} texts, CPU ms per text "
                f"{out['served_cpu'].per_item_ms(out['served'].requests)}")
            jobs = multi_text_jobs(args.corpus, texts, args.job_texts, args.clients)
            with CpuMeter({"API": api.process.pid, "worker": worker.process.pid, "Redis": redis.process.pid}
                          ) as out["multi_cpu"]:
                out["multi"] = load.run_load(api.url, jobs, args.clients, load.moderate_via_queue)
            log(f"S{args.job_texts}: {out['multi'].rate * args.job_texts:.0f} texts/s")
            out["api_rss"] = max(out["api_rss"], rss_mb(api))
            with CpuMeter({"API": api.process.pid, "worker": worker.process.pid, "Redis": redis.process.pid}
                          ) as out["light_cpu"]:
                out["light"] = load.run_load(api.url, texts[:args.light_texts], 1, load.moderate_via_queue)
            log(f"light load p50 {out['light'].percentile(50) * 1000:.1f} ms")
            out["worker_rss"] = rss_mb(worker)
        finally:
            worker.stop()
    finally:
        api.stop()
    return out


def measure_sync(args, env: dict, texts: list[str], logs: Path) -> dict:
    sync_api = start_api(env, logs / "sync.log", workers=args.gunicorn_workers, app="bench.sync_app:create_app()",
                         timeout=300)
    try:
        load.run_load(sync_api.url, texts[-100:], args.clients, load.moderate_sync)  # warm-up
        with CpuMeter({"API+model": sync_api.process.pid}) as cpu:
            result = load.run_load(sync_api.url, texts, args.clients, load.moderate_sync)
        log(f"B: {result.rate:.0f} texts/s")
        return {"sync": result, "sync_cpu": cpu, "sync_rss": rss_mb(sync_api)}
    finally:
        sync_api.stop()


def cpu_view(per_text_ms: dict[str, dict[str, float]]) -> str:
    """Each row's CPU ms per text by process (API = gunicorn master + workers, worker = `python -m worker`,
    Redis, clients = this load generator), the total, and the rate the row would reach with the machine's
    cores to itself: contention moves these much less than wall-clock rates, so on a busy machine compare
    these."""
    cores = cpu_quota()
    seen = {name for by_process in per_text_ms.values() for name in by_process}
    processes = [name for name in CPU_COLUMNS if name in seen] + sorted(seen - set(CPU_COLUMNS))
    lines = ["| row | " + " | ".join(processes) + " | total | texts/s if it had the cores alone |",
             "|---|" + "---:|" * (len(processes) + 2)]
    for row, by_process in per_text_ms.items():
        total = sum(by_process.values())
        if total > 0:
            cells = " | ".join(f"{by_process[name]:.2f}" if name in by_process else "" for name in processes)
            lines.append(f"| {row} | {cells} | {total:.2f} | {cores * 1000 / total:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = load_texts(args.corpus, args.texts)
    defaults = Settings()
    workdir = Path(tempfile.mkdtemp(prefix="moderation-bench-"))
    model_path, model_note = resolve_model(args, workdir)
    settings_note = ", ".join(f"{name}={os.environ.get(name) or default}" for name, default in (
        ("ENGINE", defaults.engine), ("QUANTIZE", defaults.quantize or "(int8 on CPU)"),
        ("BATCH_MAX_TEXTS", defaults.batch_max_texts), ("BATCH_MAX_TOKENS", defaults.batch_max_tokens),
        ("BATCH_MAX_WAIT_MS", defaults.batch_max_wait_ms),
        ("WORKER_CONCURRENCY", "0 (auto: one batch per core on CPU)"), ("TORCH_THREADS", "0 (= CPU quota / batches)"),
        ("GUNICORN_THREADS", 32)))
    corpus = args.corpus.resolve()
    corpus_name = corpus.relative_to(PROJECT_ROOT) if corpus.is_relative_to(PROJECT_ROOT) else corpus
    description = report.machine_description(device, {
        "model": model_note,
        "corpus": f"{len(texts)} distinct tweets from {corpus_name}",
        "settings": f"{settings_note}, GUNICORN_WORKERS={args.gunicorn_workers}, CACHE_TTL=0, "
                    f"clients={args.clients} (enqueue: {args.enqueue_clients}), S{args.job_texts}: "
                    f"{args.job_texts} texts per job, device={device}",
    })
    log(f"model: {model_note}; device {device}; {len(texts)} texts")

    sweep = "_skipped (--skip-sweep)_" if args.skip_sweep else engine_sweep_table(args, model_path, texts)
    rows, model = measure_inprocess(args, model_path, device, texts)
    redis = RedisServer(workdir / "redis").start()
    env = service_env(redis.url, model_path, device)
    try:
        svc = measure_service(args, env, redis, texts, workdir)
        try:
            sync = {} if args.skip_sync else measure_sync(args, env, texts, workdir)
        except RuntimeError as exc:  # the other rows are still worth writing down
            log(f"B failed: {exc}")
            sync = {"error": str(exc).splitlines()[-1][:200]}
    finally:
        redis.stop()

    served, multi, light, enqueue = svc["served"], svc["multi"], svc["light"], svc["enqueue"]
    served_cpu = svc["served_cpu"].per_item(served.requests)
    multi_cpu = svc["multi_cpu"].per_item(multi.requests * args.job_texts)
    enqueue_cpu = svc["enqueue_cpu"].per_item(enqueue.requests)
    forward_cpu_ms = forward_cpu_at(model_path, device, texts, svc["pass_sizes"]) * 1000
    sizes_note = ", ".join(f"{size}: {passes}" for size, passes in sorted(svc["pass_sizes"].items()))
    log(f"model alone in S's forward-pass sizes ({sizes_note}): {forward_cpu_ms:.2f} CPU ms per text")
    worker_extra = served_cpu["worker"] - forward_cpu_ms
    worker_minus_l = served_cpu["worker"] - model["cpu_per_text"] * 1000
    rows.append(load_row("S", f"queue-backed service, {args.clients} clients, single-text jobs (POST wait=)", served))
    rows[-1].note += (f"; mean forward pass {svc['mean_batch']:.1f} texts (passes by size, histogram bucket middles: "
                      f"{sizes_note}); CPU ms per text: {report.ms_list(served_cpu)}")
    rows.append(load_row(f"S{args.job_texts}", f"as S, {args.job_texts} texts per job", multi, args.job_texts))
    rows[-1].note += f"; CPU ms per text: {report.ms_list(multi_cpu)}"
    sync_result = sync.get("sync")
    if sync_result is not None:
        rows.append(load_row("B", f"original design: sync Flask endpoint, torch fp32, one text per request, "
                                  f"{args.clients} clients", sync_result))
        rows[-1].note += (f"; RSS {sync['sync_rss']:.0f} MB (gunicorn, all processes); CPU ms per text: "
                          f"{report.ms_list(sync['sync_cpu'].per_item(sync_result.requests))}")
    elif sync.get("error"):
        rows.append(report.Row("B", "original design (sync Flask endpoint, torch fp32)",
                               note=f"**did not run**: {sync['error']}"))
    rows.append(load_row("light", "1 client, one text at a time, through the queue", light))
    rows.append(report.Row("enqueue", f"POST /generate, no worker, {args.enqueue_clients} clients (jobs/s)",
                           enqueue.rate, enqueue.percentile(50), enqueue.percentile(95), enqueue.percentile(99),
                           f"{enqueue.requests} jobs" + (f", **{enqueue.failures} failed**" if enqueue.failures
                                                         else "") + f"; CPU ms per job: {report.ms_list(enqueue_cpu)}"))
    rows.append(report.Row("memory", "resident memory", note=f"API {svc['api_rss']:.0f} MB (gunicorn master + "
                           f"{args.gunicorn_workers} workers), worker {svc['worker_rss']:.0f} MB"))

    gpu = device.startswith("cuda")
    s_over_b = served.rate / sync_result.rate if sync_result else float("nan")
    s_over_l, s32_over_l = served.rate / model["limit"], multi.rate * args.job_texts / model["limit"]
    extra_ms = (light.percentile(50) - model["single"]) * 1000
    failures = sum(r.failures for r in (served, multi, light, enqueue, *([sync_result] if sync_result else [])))
    sb_target = TARGETS["S/B (GPU)" if gpu else "S/B"]
    checks = [
        ("S/B", f"{s_over_b:.2f}" if sync_result else "skipped", f">= {sb_target}", s_over_b >= sb_target),
        ("S/L", f"{s_over_l:.2f}", f">= {TARGETS['S/L']}", s_over_l >= TARGETS["S/L"]),
        (f"S{args.job_texts}/L", f"{s32_over_l:.2f}", f">= {TARGETS['S32/L']}", s32_over_l >= TARGETS["S32/L"]),
        ("light-load p50 - single-text model time (L1)", f"{extra_ms:.1f} ms", f"<= {TARGETS['light extra ms']:g} ms",
         extra_ms <= TARGETS["light extra ms"]),
        (f"worker CPU per text beyond its forward passes (S worker - the model alone in passes of S's sizes: "
         f"{forward_cpu_ms:.2f} ms)", f"{worker_extra:.2f} ms",
         f"<= {TARGETS['worker extra CPU ms']} ms", worker_extra <= TARGETS["worker extra CPU ms"]),
        ("API CPU per accepted job (enqueue row)", f"{enqueue_cpu['API']:.2f} ms", f"<= {TARGETS['API CPU ms']} ms",
         enqueue_cpu["API"] <= TARGETS["API CPU ms"]),
        ("API CPU per job, accepted and waited for (S)", f"{served_cpu['API']:.2f} ms",
         f"<= {TARGETS['API CPU ms']} ms", served_cpu["API"] <= TARGETS["API CPU ms"]),
        ("failed requests", str(failures), "0", failures == 0),
        # Not issue 20's: issue 9's figures, and the old worker measure (against L's batches of 32).
        ("(issue 9) enqueue rate (no worker)", f"{enqueue.rate:,.0f} jobs/s", f">= {TARGETS['enqueue']:,.0f} jobs/s",
         enqueue.rate >= TARGETS["enqueue"]),
        ("(issue 9) API RSS", f"{svc['api_rss']:.0f} MB", f"<= {TARGETS['API RSS MB']:g} MB",
         svc["api_rss"] <= TARGETS["API RSS MB"]),
        ("(issue 9) S worker CPU per text - L's", f"{worker_minus_l:.2f} ms",
         f"<= {TARGETS['worker extra CPU ms']} ms", worker_minus_l <= TARGETS["worker extra CPU ms"]),
    ]
    description += "\n- load average after the run: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    # L ran in this process: its CPU is the model's alone, shown under "worker" (what the worker adds to it
    # is the S worker figure minus L's).
    cpu_rows = {"L": {"worker": model["cpu_per_text"] * 1000},
                "model alone in S's forward-pass sizes": {"worker": forward_cpu_ms},
                "S": served_cpu, f"S{args.job_texts}": multi_cpu}
    if sync_result is not None:
        cpu_rows["B"] = sync["sync_cpu"].per_item(sync_result.requests)
    cpu_rows["light"] = svc["light_cpu"].per_item(light.requests)
    cpu_rows["enqueue (per job)"] = enqueue_cpu
    name = args.name or report.machine_name(device) + ("-quick" if args.quick else "")
    document = (f"# Benchmark: {name}\n\n`python -m bench.run {' '.join(argv)}`\n\n{description}\n\n"
                f"## Engine sweep (in process, texts/s)\n\n{sweep}\n\n## Rows\n\n{report.table(rows)}\n\n"
                f"## Targets\n\n{report.checks_table(checks)}\n\n"
                f"## CPU ms per text by process (what a busy machine distorts least)\n\n{cpu_view(cpu_rows)}\n")
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
