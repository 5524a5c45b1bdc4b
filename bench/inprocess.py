"""The in-process limit: the model alone, no HTTP, no queue (rows L, L-int8 and the single-text time)."""

from __future__ import annotations

import os
import statistics
import time

from shared.config import get_settings
from worker.inference import TextClassifier

NO_TOKEN_LIMIT = 10**9


def load_classifier(path: str, device: str, engine: str | None = None, quantize: str | None = None,
                    threads: int = 0) -> TextClassifier:
    """A classifier as the worker builds it; engine/quantize None mean the worker's defaults (ENGINE,
    QUANTIZE); engine="torch", quantize="none" is the original app's torch fp32."""
    settings = get_settings()
    return TextClassifier(path, device, settings.quantize if quantize is None else quantize,
                          threads or int(os.environ.get("TORCH_THREADS", "0")),
                          settings.engine if engine is None else engine, settings.engine_cache_dir)


def sync_device(classifier: TextClassifier) -> None:
    if classifier.device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def batched_rate(classifier: TextClassifier, texts: list[str], batch_size: int) -> float:
    """Texts/s scoring `texts` in length-sorted passes of `batch_size` (the worker's own code path)."""
    return batched_rate_and_cpu(classifier, texts, batch_size)[0]


def batched_rate_and_cpu(classifier: TextClassifier, texts: list[str], batch_size: int) -> tuple[float, float]:
    """(texts/s, CPU seconds per text): CPU per text does not depend on what else the machine runs."""
    classifier.score_many(texts[:batch_size * 2], batch_size, NO_TOKEN_LIMIT)  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    classifier.score_many(texts, batch_size, NO_TOKEN_LIMIT)
    sync_device(classifier)
    return len(texts) / (time.perf_counter() - started), (time.process_time() - cpu_started) / len(texts)


def grouped_cpu_per_text(classifier: TextClassifier, texts: list[str], group_sizes: list[int],
                         max_tokens: int) -> float:
    """CPU seconds per text scoring `texts` in arrival order in groups of these sizes (cycled), each group
    cut into length-sorted passes as the worker cuts a batch: the model's own CPU at the service's sizes."""
    classifier.score_many(texts[:64], max(group_sizes), max_tokens)  # warm-up
    cpu_started, start = time.process_time(), 0
    while start < len(texts):
        for size in group_sizes:
            classifier.score_many(texts[start:start + size], size, max_tokens)
            start += size
            if start >= len(texts):
                break
    sync_device(classifier)
    return (time.process_time() - cpu_started) / len(texts)


def single_text_seconds(classifier: TextClassifier, texts: list[str]) -> float:
    """Median time to score one text on its own (tokenize + forward + softmax)."""
    classifier.scores(texts[:5])
    times = []
    for text in texts:
        started = time.perf_counter()
        classifier.scores([text])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def best_batch(classifier: TextClassifier, sample: list[str], sizes: list[int]) -> tuple[int, dict[int, float]]:
    """Sweep batch sizes on a sample; returns the fastest size and every size's rate."""
    rates = {size: batched_rate(classifier, sample, size) for size in sizes}
    return max(rates, key=rates.get), rates
