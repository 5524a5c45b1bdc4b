"""Tokenising, batching into forward passes and probabilities; the model runs in worker/engines/.

TextClassifier is what the rest of the worker (and bench/, model/evaluate.py) uses. It tokenises
each text once, plans length-sorted passes from those token ids, pads each pass and hands it to
a backend: ONNX Runtime (default on CPU) or PyTorch (GPU, and fallback).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

# Idle OpenMP threads sleep instead of spinning: the API, Redis and the load share these cores, and
# spinning torch threads starved them (2 threads on 2 busy cores: 22 texts/s spinning, 54 passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from transformers import AutoConfig, AutoTokenizer  # noqa: E402

from shared.config import DEFAULT_ENGINE_CACHE_DIR, DEFAULT_MAX_TEXT_TOKENS  # noqa: E402
from worker.batching import plan_forward_passes  # noqa: E402
from worker.engines import ENGINES, QUANTIZE_MODES, Backend  # noqa: E402
from worker.windows import plan_windows, sentence_starts  # noqa: E402

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
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_engine(engine: str, device: str) -> str:
    """auto: ONNX Runtime on CPU (2-5x torch fp32 there), torch on CUDA (fp16)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "onnx" if device == "cpu" else "torch"
    return engine


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


@dataclass
class PassStats:
    """What one forward pass did, for metrics."""
    texts: int
    padded_tokens: int
    seconds: float


class TextClassifier:
    """A sequence-classification model folder ready for inference.

    TextClassifier(path, device="", quantize="", threads=0, engine="auto", cache_dir="")

    - device: "cpu", "cuda", "cuda:N"; "" picks CUDA when available.
    - quantize: "int8" or "none"; "" means int8 on CPU. On CUDA torch always runs fp16.
    - threads: intra-op threads on CPU; 0 means the CPU quota of this process.
    - engine: "onnx" (ONNX Runtime, CPU only), "torch", or "auto" (onnx on CPU, torch on CUDA).
      If ONNX export fails, one warning is logged and torch runs instead; `.engine` says which runs.
    - cache_dir: where exported ONNX files are kept (ENGINE_CACHE_DIR); "" is var/engine-cache.

    - max_text_tokens: tokens read per text (MAX_TEXT_TOKENS); past them a text is not read.

    The model reads max_length tokens at a time: the tokenizer's model_max_length (model/build.py
    writes the trained length), capped by the position embeddings. A longer text is read in windows
    of at most that length (worker/windows.py: overlapping by half, and sentence by sentence), each
    window is scored in the same length-sorted passes as every other text, and each label takes its
    highest window score.
    """

    def __init__(self, path: str, device: str = "", quantize: str = "", threads: int = 0,
                 engine: str = "auto", cache_dir: str = "", max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS):
        started = time.perf_counter()
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be int8 or none, got {quantize!r}")
        self.device = pick_device(device)
        requested = pick_engine(engine, self.device)
        if requested == "onnx" and self.device != "cpu":
            log.warning("ENGINE=onnx runs on CPU only (onnxruntime CPU build); ignoring device %s", self.device)
            self.device = "cpu"
        quantize = quantize or ("int8" if self.device == "cpu" else "none")
        threads = threads or cpu_quota()
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelLoadError(f"cannot load a text-classification model from {path!r}: "
                                 "the folder has no config.json")
        try:
            self.config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, ImportError, KeyError...
            raise ModelLoadError(f"cannot load a text-classification model from {path!r}: "
                                 f"{_first_line(exc)}") from exc
        self.backend = self._load_backend(path, requested, quantize, threads, cache_dir or DEFAULT_ENGINE_CACHE_DIR)
        self.engine, self.precision = self.backend.name, self.backend.precision
        self.multi_label = self.config.problem_type == "multi_label_classification"
        limits = [self.tokenizer.model_max_length, getattr(self.config, "max_position_embeddings", 512)]
        self.max_length = min(limit for limit in limits if limit and limit > 0)
        # Text tokens per window: the trained length less the special tokens ([CLS], [SEP]) around them.
        self.window_size = max(1, self.max_length - self.tokenizer.num_special_tokens_to_add())
        self.max_text_tokens = max_text_tokens
        self._pad_values = {"input_ids": self.tokenizer.pad_token_id or 0}
        # HF fast tokenizers are not safe to share between threads ("Already borrowed") when
        # WORKER_CONCURRENCY > 1 runs batches side by side.
        self._tokenizer_lock = threading.Lock()
        # Padded tokens per forward pass when BATCH_MAX_TOKENS is unset. On CPU a padding token
        # costs as much as a real one, so shorter, length-sorted passes win: on 2 cores, random
        # groups of 32 tweets ran at 76 texts/s in one pass and 124 texts/s cut at 512 tokens.
        # A GPU is bound by launches, not tokens: it wants the biggest passes.
        self.token_budget = 512 if self.device == "cpu" else 32768
        self.load_seconds = time.perf_counter() - started

    def _load_backend(self, path: str, engine: str, quantize: str, threads: int, cache_dir: str) -> Backend:
        candidates = tuple(self.tokenizer.model_input_names)
        if engine == "onnx":
            from worker.engines.onnx_backend import OnnxBackend
            try:
                return OnnxBackend(path, self.tokenizer, quantize, threads, cache_dir, candidates)
            except Exception as exc:  # an operator ONNX lacks, an unwritable cache, a protobuf limit...
                log.warning("ONNX export of %s failed, running it with torch instead: %s: %s",
                            path, type(exc).__name__, _first_line(exc)[:300])
        from worker.engines.torch_backend import TorchBackend
        try:
            return TorchBackend(path, self.device, quantize, threads, candidates)
        except Exception as exc:
            raise ModelLoadError(f"cannot load a text-classification model from {path!r}: "
                                 f"{_first_line(exc)}") from exc

    def describe(self) -> str:
        return f"{self.engine} {self.precision} on {self.device}, max {self.max_length} tokens"

    def encode(self, texts: list[str]) -> tuple[dict[str, list[list[int]]], list[int]]:
        """Token ids (and masks) per window of at most max_length tokens (worker/windows.py), unpadded,
        and the index of the text each window belongs to. Every text is tokenised once; a text within
        max_length is one window, exactly as the tokenizer gives it."""
        with self._tokenizer_lock:
            encoded = self.tokenizer(texts, truncation=False, return_special_tokens_mask=True, verbose=False)
        # A fast tokenizer's encodings hold each token's character offsets: read only for the texts longer
        # than one window (where sentences are found; ~5% of tweets) rather than converting every text's
        # offset mapping. None for a slow tokenizer (no offsets: long texts get no sentence windows).
        encodings = encoded.encodings if getattr(self.tokenizer, "is_fast", False) else None
        names = [name for name in self.backend.input_names if name in encoded]
        windows: dict[str, list[list[int]]] = {name: [] for name in names}
        owners: list[int] = []
        for index, special in enumerate(encoded["special_tokens_mask"]):
            prefix = next((i for i, flag in enumerate(special) if not flag), len(special))
            suffix = next((i for i, flag in enumerate(reversed(special)) if not flag), 0)
            content = len(special) - prefix - suffix
            read = min(content, self.max_text_tokens)
            starts = sentence_starts(texts[index], encodings[index].offsets[prefix:prefix + read]) \
                if encodings and read > self.window_size else []
            for start, end in plan_windows(read, self.window_size, starts):
                for name in names:
                    row = encoded[name][index]
                    windows[name].append(row if (start, end) == (0, content)
                                         else row[:prefix] + row[prefix + start:prefix + end] + row[len(row) - suffix:])
                owners.append(index)
        return windows, owners

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens per window, windows in text order (one per text up to max_length tokens)."""
        return [len(ids) for ids in self.encode(texts)[0]["input_ids"]]

    def windows_per_text(self, texts: list[str]) -> list[int]:
        windows = Counter(self.encode(texts)[1])
        return [windows[i] for i in range(len(texts))]

    def _pad(self, encoded: dict[str, list[list[int]]], group: list[int]) -> dict[str, np.ndarray]:
        """One pass's int64 arrays, padded to its longest text on the tokenizer's side."""
        width = max(len(encoded["input_ids"][i]) for i in group)
        left = self.tokenizer.padding_side == "left"
        batch = {}
        for name in self.backend.input_names:
            array = np.full((len(group), width), self._pad_values.get(name, 0), dtype=np.int64)
            rows = encoded.get(name)
            if rows is not None:
                for row, index in enumerate(group):
                    ids = rows[index]
                    if left:
                        array[row, width - len(ids):] = ids
                    else:
                        array[row, :len(ids)] = ids
            batch[name] = array
        return batch

    def _probabilities(self, logits: np.ndarray) -> list[list[float]]:
        """Per-label probabilities: sigmoid if multi-label, else softmax."""
        logits = logits.astype(np.float64)
        if self.multi_label:
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = shifted / shifted.sum(axis=-1, keepdims=True)
        return probs.tolist()

    def scores(self, texts: list[str]) -> list[list[float]]:
        """Per-label probabilities, every window of every text in one forward pass."""
        return self.score_many(texts, 10**9, 10**12)

    def score_many(self, texts: list[str], max_texts: int, max_tokens: int,
                   on_pass=None) -> list[list[float]]:
        """Scores for any number of texts, their windows length-sorted into forward passes of at most
        max_texts windows and max_tokens padded tokens; each label's highest window score; input order kept."""
        encoded, owners = self.encode(texts)
        out: list[np.ndarray | None] = [None] * len(texts)
        for owner, row in zip(owners, self.window_scores(encoded, max_texts, max_tokens, on_pass)):
            out[owner] = row if out[owner] is None else np.maximum(out[owner], row)
        return [np.asarray(row).tolist() for row in out]

    def window_scores(self, encoded: dict[str, list[list[int]]], max_texts: int, max_tokens: int,
                      on_pass=None) -> list[list[float]]:
        """Per-label probabilities of each window of `encode`'s output (or any subset of its rows), in order."""
        lengths = [len(ids) for ids in encoded["input_ids"]]
        out: list[list[float] | None] = [None] * len(lengths)
        for group in plan_forward_passes(lengths, max_texts, max_tokens):
            started = time.perf_counter()
            rows = self._probabilities(self.backend.logits(self._pad(encoded, group)))
            for window, row in zip(group, rows):
                out[window] = row
            if on_pass is not None:
                longest = max(lengths[i] for i in group)
                on_pass(PassStats(len(group), longest * len(group), time.perf_counter() - started))
        return out
