"""Model loading and batched scoring. The only module that imports torch and transformers."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

# Idle OpenMP threads sleep instead of spinning: the API, Redis and the load share these cores, and
# spinning torch threads starved them (2 threads on 2 busy cores: 22 texts/s spinning, 54 passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after OMP_WAIT_POLICY, which OpenMP reads once)
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from worker.batching import plan_forward_passes

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    pass


def cpu_quota() -> int:
    """CPUs this process may use: the cgroup quota (containers) or the affinity mask."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return len(os.sched_getaffinity(0))


def pick_device(requested: str) -> str:
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class PassStats:
    """What one forward pass did, for metrics."""
    texts: int
    padded_tokens: int
    seconds: float


class TextClassifier:
    """A sequence-classification model ready for inference: eval mode, no autograd, one device."""

    def __init__(self, path: str, device: str = "", quantize: str = "", threads: int = 0):
        started = time.perf_counter()
        self.device = pick_device(device)
        if self.device == "cpu":
            torch.set_num_threads(threads or cpu_quota())
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelLoadError(f"cannot load a text-classification model from {path!r}: "
                                 "the folder has no config.json")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, ImportError, KeyError...
            detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ModelLoadError(f"cannot load a text-classification model from {path!r}: {detail}") from exc
        model.eval()
        if self.device.startswith("cuda"):
            model = model.half()  # fp16 on GPU: ~2x throughput, scores match fp32 to ~1e-3
        elif quantize == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model.to(self.device)
        self.config = model.config
        self.multi_label = model.config.problem_type == "multi_label_classification"
        limits = [self.tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 512)]
        self.max_length = min(limit for limit in limits if limit and limit > 0)
        # HF fast tokenizers are not safe to share between threads ("Already borrowed") when
        # WORKER_CONCURRENCY > 1 runs batches side by side.
        self._tokenizer_lock = threading.Lock()
        # Padded tokens per forward pass when BATCH_MAX_TOKENS is unset. On CPU a padding token
        # costs as much as a real one, so shorter, length-sorted passes win: on 2 cores, random
        # groups of 32 tweets ran at 76 texts/s in one pass and 124 texts/s cut at 512 tokens.
        # A GPU is bound by launches, not tokens: it wants the biggest passes.
        self.token_budget = 512 if self.device == "cpu" else 32768
        self.load_seconds = time.perf_counter() - started

    def token_lengths(self, texts: list[str]) -> list[int]:
        with self._tokenizer_lock:
            encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    @torch.inference_mode()
    def scores(self, texts: list[str]) -> list[list[float]]:
        """Per-label probabilities for one forward pass (sigmoid if multi-label, else softmax)."""
        with self._tokenizer_lock:
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt").to(self.device)
        logits = self.model(**batch).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return probs.cpu().tolist()

    def score_many(self, texts: list[str], max_texts: int, max_tokens: int,
                   on_pass=None) -> list[list[float]]:
        """Scores for any number of texts, length-sorted into forward passes; input order kept."""
        lengths = self.token_lengths(texts)
        out: list[list[float] | None] = [None] * len(texts)
        for group in plan_forward_passes(lengths, max_texts, max_tokens):
            started = time.perf_counter()
            for index, row in zip(group, self.scores([texts[i] for i in group])):
                out[index] = row
            if on_pass is not None:
                longest = max(lengths[i] for i in group)
                on_pass(PassStats(len(group), longest * len(group), time.perf_counter() - started))
        return out
