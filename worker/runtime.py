"""Per-process worker state: the loaded models and the Redis-backed stores the task uses.

Loaded once by worker/__main__.py before Celery starts consuming (the threads pool never forks,
so torch and CUDA are initialised exactly once, in the process that uses them).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from shared import __version__
from shared.config import Settings
from shared.jobs import JobStore
from shared.model_registry import ModelSpec, build_spec
from shared.redis_client import make_redis
from worker import metrics
from worker.cache import ScoreCache
from worker.deliveries import DeliveryCounter
from worker.inference import TextClassifier, cpu_quota

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    spec: ModelSpec
    classifier: TextClassifier
    cache: ScoreCache


@dataclass
class WorkerRuntime:
    settings: Settings
    store: JobStore
    models: dict[str, ServedModel]
    deliveries: DeliveryCounter


_runtime: WorkerRuntime | None = None


def _fingerprint(name: str, classifier: TextClassifier) -> str:
    """Cache namespace: changes when the model's config (labels, weights' identity) changes."""
    return hashlib.sha256(f"{name}\0{classifier.config.to_json_string()}".encode()).hexdigest()[:16]


def load_runtime(settings: Settings) -> WorkerRuntime:
    """Load every model this worker serves; raises ModelLoadError on a bad MODEL_PATH."""
    global _runtime
    client = make_redis(settings)
    served = {}
    for name in settings.worker_models:
        path = settings.models[name]
        # Worker processes on one host share its CPU quota; each takes its part for torch's threads.
        threads = settings.torch_threads or max(1, cpu_quota() // settings.worker_processes)
        classifier = TextClassifier(path, settings.device, settings.quantize, threads, settings.engine,
                                    settings.engine_cache_dir, settings.max_text_tokens)
        spec = build_spec(name, path, classifier.config.to_dict(), settings)
        served[name] = ServedModel(spec, classifier, ScoreCache(client, _fingerprint(name, classifier),
                                                                settings.cache_ttl))
        metrics.MODEL_LOAD.labels(name).set(classifier.load_seconds)
        metrics.WORKER_INFO.labels(name, classifier.device, __version__, classifier.engine).set(1)
        log.info("loaded model %s (%s) from %s (%s) in %.1fs (labels: %s)", name, spec.model_id, path,
                 classifier.describe(), classifier.load_seconds, ", ".join(spec.labels))
    _runtime = WorkerRuntime(settings, JobStore(client, settings.result_ttl), served,
                             DeliveryCounter(client, settings.result_ttl, settings.max_deliveries))
    return _runtime


def get_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("worker runtime not loaded: start the worker with `python -m worker`")
    return _runtime

