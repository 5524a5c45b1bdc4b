"""Per-process worker state: the loaded models and the Redis-backed stores the task uses.

Loaded once by worker/__main__.py before Celery starts consuming (the threads pool never forks,
so torch and CUDA are initialised exactly once, in the process that uses them).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

from shared import __version__, cascade
from shared.config import Settings
from shared.jobs import JobStore
from shared.model_registry import ModelSpec, build_spec, read_model_config
from shared.redis_client import WORKER_RETRIES, make_redis
from worker import metrics
from worker.cache import ScoreCache
from worker.cascade import CascadeClassifier
from worker.deliveries import DeliveryCounter
from worker.inference import TextClassifier, cpu_quota, pick_device

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    spec: ModelSpec
    classifier: TextClassifier | CascadeClassifier
    cache: ScoreCache


@dataclass
class WorkerRuntime:
    settings: Settings
    store: JobStore
    models: dict[str, ServedModel]
    deliveries: DeliveryCounter


_runtime: WorkerRuntime | None = None


def _fingerprint(name: str, classifier: TextClassifier | CascadeClassifier) -> str:
    """Cache namespace: changes when the model's config (labels, weights' identity) changes, and a cascade's
    when either stage's config or its band (CASCADE_BAND) does: each changes the scores."""
    parts = [name, classifier.config.to_json_string()]
    if isinstance(classifier, CascadeClassifier):
        parts += [classifier.fast.config.to_json_string(), classifier.accurate.config.to_json_string(),
                  repr(classifier.band)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def load_classifier(name: str, path: str, settings: Settings, threads: int) -> TextClassifier | CascadeClassifier:
    """The model folder's classifier: a CascadeClassifier when its config.json has a "cascade" key (its stages'
    folders resolved against it; shared/cascade.py), else a TextClassifier."""
    options = {"device": settings.device, "quantize": settings.quantize, "threads": threads,
               "engine": settings.engine, "cache_dir": settings.engine_cache_dir,
               "max_text_tokens": settings.max_text_tokens}
    if cascade.KEY not in read_model_config(path):
        return TextClassifier(path, **options)

    def count_windows(stage: str, windows: int) -> None:
        metrics.CASCADE_WINDOWS.labels(name, stage).inc(windows)
    return CascadeClassifier(path, band=settings.cascade_band, on_windows=count_windows, **options)


def batch_concurrency(settings: Settings, device: str) -> int:
    """Batches in flight in this worker process: WORKER_CONCURRENCY, else (0, the default) one on a GPU and
    on CPU as many as this process's share of the CPU quota holds passes of TORCH_THREADS threads (one
    thread when unset). Live traffic comes in small passes (about 8 texts), where two passes on one
    thread each waste less than one pass split over two threads: on 2 cores with 32 clients, 2 x 1
    served 344 single-text jobs/s where 1 x 2 served 280-293 (docs/performance.md, "The worker's shape")."""
    if settings.worker_concurrency:
        return settings.worker_concurrency
    if device != "cpu":
        return 1
    return max(1, cpu_share(settings) // (settings.torch_threads or 1))


def pass_threads(settings: Settings, concurrency: int) -> int:
    """Intra-op threads per forward pass: TORCH_THREADS, else the process's CPU share split between its
    batches in flight."""
    return settings.torch_threads or max(1, cpu_share(settings) // concurrency)


def cpu_share(settings: Settings) -> int:
    """This process's part of the host's CPU quota (WORKER_PROCESSES processes share it)."""
    return max(1, cpu_quota() // settings.worker_processes)


def load_runtime(settings: Settings) -> WorkerRuntime:
    """Load every model this worker serves; raises ModelLoadError on a bad MODEL_PATH. The runtime's
    settings carry the resolved WORKER_CONCURRENCY (batch_concurrency), which the Celery worker uses."""
    global _runtime
    client = make_redis(settings, retries=WORKER_RETRIES)  # shared/redis_client.py: why the worker retries
    served = {}
    concurrency = batch_concurrency(settings, pick_device(settings.device))
    settings = replace(settings, worker_concurrency=concurrency)
    # Worker processes on one host share its CPU quota; each takes its part for its batches' threads.
    threads = pass_threads(settings, concurrency)
    for name in settings.worker_models:
        path = settings.models[name]
        classifier = load_classifier(name, path, settings, threads)
        spec = build_spec(name, path, classifier.config.to_dict(), settings)
        served[name] = ServedModel(spec, classifier, ScoreCache(client, _fingerprint(name, classifier),
                                                                settings.cache_ttl))
        metrics.MODEL_LOAD.labels(name).set(classifier.load_seconds)
        metrics.WORKER_INFO.labels(name, classifier.device, __version__, classifier.engine).set(1)
        log.info("loaded model %s (%s) from %s (%s) in %.1fs (labels: %s)", name, spec.model_id, path,
                 classifier.describe(), classifier.load_seconds, ", ".join(spec.labels))
    log.info("%d batch(es) in flight, forward passes on %d thread(s) each", concurrency, threads)
    _runtime = WorkerRuntime(settings, JobStore.from_settings(client, settings), served,
                             DeliveryCounter(client, settings.result_ttl, settings.max_deliveries))
    return _runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("worker runtime not loaded: start the worker with `python -m worker`")
    return _runtime

