"""CascadeClassifier: a fast model scores every window, an accurate one the windows the fast one is unsure of.

Served under one model name from a cascade folder (shared/cascade.py; `python -m model.cascade` writes it). It
offers what the worker uses of TextClassifier (worker/inference.py), windows being the fast model's: the API
counts tokens with the fast tokenizer, and slices (worker/slices.py), fairness and the token budget plan on
what the fast model reads, so they work unchanged.

Per window, so a long text escalates only its doubtful parts:
- the fast model scores it; it is uncertain when, for any label, |logit(score) - logit(fast threshold)| < band
  (logit units: the same band means the same confidence at any threshold). Band 0: the fast model alone.
  The band is one number for every label or one per label (shared/cascade.py).
- an uncertain window is decoded back to text with the fast tokenizer and scored by the accurate model (its own
  windows, each label's highest); its row is the accurate stage's verdict: the accurate scores, or, for a
  folder with a "blend", both models' scores stacked (blended()).
- a row the fast model decides is mapped onto the accurate stage's threshold scale, per label:
  s' = sigmoid(logit(s) - logit(t_fast) + logit(t_accurate)). A score at the fast threshold lands on the
  accurate stage's, so one set of thresholds (the cascade folder's config.json) gives each row its stage's
  verdict, and a text's highest score per label over windows decided by different stages still decides it.

Each row has one more column than the model has labels: 1.0 where the accurate model decided the window, else
0.0. Rows are folded by each column's highest (score_many; slices' partial scores), so a text's says whether the
accurate stage decided any part of it; worker/policy.py reports it as the result's "stage" (stage_of). The
score cache and job records store rows as JSON lists of any length.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from transformers import AutoConfig, AutoTokenizer

from shared.cascade import ACCURATE, FAST, KEY, CascadeConfig, check_stages
from shared.config import DEFAULT_MAX_TEXT_TOKENS, Settings
from shared.model_registry import DEFAULT_THRESHOLD, build_spec, read_model_config
from worker.inference import ModelLoadError, TextClassifier

log = logging.getLogger(__name__)

# Scores are clipped into [EPSILON, 1 - EPSILON] before their logit: a saturated sigmoid (1.0 in float32)
# would be infinitely far from every threshold.
EPSILON = 1e-6


def logit(probabilities) -> np.ndarray:
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(clipped / (1 - clipped))


def stage_of(row: list[float], labels: int) -> str:
    """The stage that decided a text, from its row (its windows' highest): the column after the labels."""
    return ACCURATE if len(row) > labels and row[labels] >= 0.5 else FAST


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def fast_decisions(fast: np.ndarray, fast_threshold_logits: np.ndarray, accurate_threshold_logits: np.ndarray,
                   bands: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """The fast model's rows moved onto the accurate stage's threshold scale, and which rows are uncertain
    (any label within its band, in logits, of its fast threshold): those go to the accurate stage."""
    shifted = logit(fast) - fast_threshold_logits
    return sigmoid(shifted + accurate_threshold_logits), (np.abs(shifted) < bands).any(axis=1)


def blended(fast: np.ndarray, accurate: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The accurate stage's verdict on rows both models scored: the accurate scores alone (weights None), else
    per label sigmoid(w_fast * logit(fast) + w_accurate * logit(accurate) + bias), weights shaped (labels, 3)."""
    if weights is None:
        return np.asarray(accurate, dtype=np.float64)
    return sigmoid(weights[:, 0] * logit(fast) + weights[:, 1] * logit(accurate) + weights[:, 2])


def blend_weights(cascade: CascadeConfig, labels) -> np.ndarray | None:
    """The folder's blend as a (labels, 3) array in the labels' order, or None (the accurate scores stand)."""
    if cascade.blend is None:
        return None
    missing = [label for label in labels if label not in cascade.blend]
    if missing:
        raise ModelLoadError(f"the cascade's blend has no weights for {missing}: rebuild it with python -m "
                             "model.cascade")
    return np.array([cascade.blend[label] for label in labels], dtype=np.float64)


def _joined(fast: str, accurate: str) -> str:
    return fast if fast == accurate else f"{fast}+{accurate}"


class CascadeClassifier:
    """A cascade folder ready for inference (module docstring).

    CascadeClassifier(path, device, quantize, threads, engine, cache_dir, max_text_tokens, band, on_windows)

    - the options up to max_text_tokens: TextClassifier's, given to both stages.
    - band: None is the folder's band (CASCADE_BAND overrides it: worker/runtime.py).
    - on_windows(stage, windows): called after each scoring with the windows each stage scored (metrics).
    """

    def __init__(self, path: str, device: str = "", quantize: str = "", threads: int = 0, engine: str = "auto",
                 cache_dir: str = "", max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS, band: float | None = None,
                 on_windows: Callable[[str, int], None] | None = None):
        started = time.perf_counter()
        folder = read_model_config(path)
        try:
            cascade = CascadeConfig.of(folder)
        except ValueError as exc:
            raise ModelLoadError(f"cannot load the cascade model {path!r}: {exc}") from None
        if cascade is None:
            raise ModelLoadError(f"{path!r} is not a cascade folder: its config.json has no {KEY!r} key")
        self.cascade = cascade.with_band(band)
        fast_path, accurate_path = cascade.stage_paths(path)
        options = {"device": device, "quantize": quantize, "threads": threads, "engine": engine,
                   "cache_dir": cache_dir, "max_text_tokens": max_text_tokens}
        self.fast = TextClassifier(fast_path, **options)
        self.accurate = TextClassifier(accurate_path, **options)
        self.config = AutoConfig.from_pretrained(path, local_files_only=True)
        labels, accurate_thresholds = self._check_stages(path, folder, fast_path, accurate_path)
        self._fast_logits = logit([self.cascade.fast_thresholds.get(label, DEFAULT_THRESHOLD) for label in labels])
        self._accurate_logits = logit([accurate_thresholds[label] for label in labels])
        self._bands = np.array([self.cascade.band_of(label) for label in labels])
        self._blend = blend_weights(self.cascade, labels)
        self.on_windows = on_windows
        # The fast tokenizer's own copy for decoding windows: an HF fast tokenizer must not serve two threads at
        # once (TextClassifier.encode locks its own), and WORKER_CONCURRENCY > 1 runs batches side by side.
        self._decoder = AutoTokenizer.from_pretrained(fast_path, local_files_only=True)
        self._decoder_lock = threading.Lock()
        # What the worker reads of a classifier: the fast stage's windows, device and token budget.
        self.tokenizer, self.backend = self.fast.tokenizer, self.fast.backend
        self.device, self.token_budget = self.fast.device, self.fast.token_budget
        self.max_length, self.window_size = self.fast.max_length, self.fast.window_size
        self.engine = _joined(self.fast.engine, self.accurate.engine)
        self.precision = _joined(self.fast.precision, self.accurate.precision)
        self.multi_label = True
        self.load_seconds = time.perf_counter() - started

    def _check_stages(self, path: str, folder: dict, fast_path: str, accurate_path: str):
        """Both stages multi-label with the cascade folder's labels (ModelLoadError otherwise); returns the labels
        and the folder's thresholds. A stage changed since the folder was built is only logged."""
        defaults = Settings()  # the folders' own thresholds: MODEL_THRESHOLDS applies to results, not to the mapping
        cascade = build_spec(KEY, path, folder, defaults)
        stages = [build_spec(role, stage_path, stage.config.to_dict(), defaults) for role, stage_path, stage
                  in ((FAST, fast_path, self.fast), (ACCURATE, accurate_path, self.accurate))]
        try:
            check_stages(*stages)
            if cascade.labels != stages[1].labels:
                raise ValueError(f"{path} has labels {list(cascade.labels)}, its stages {list(stages[1].labels)}: "
                                 "rebuild it with python -m model.cascade")
        except ValueError as exc:
            raise ModelLoadError(f"cannot load the cascade model {path!r}: {exc}") from None
        for stage, recorded in zip(stages, (self.cascade.fast_id, self.cascade.accurate_id)):
            if stage.model_id != recorded:
                log.warning("cascade %s: its %s stage is now %s, built with %s; rebuild the folder (python -m "
                            "model.cascade) so its model id names the stages served", path, stage.name,
                            stage.model_id, recorded)
        return cascade.labels, cascade.thresholds

    @property
    def band(self) -> float | dict[str, float]:
        return self.cascade.band

    @property
    def max_text_tokens(self) -> int:
        return self.fast.max_text_tokens

    @max_text_tokens.setter
    def max_text_tokens(self, tokens: int) -> None:
        self.fast.max_text_tokens = self.accurate.max_text_tokens = tokens

    def describe(self) -> str:
        blend = ", blended" if self._blend is not None else ""
        return (f"cascade, band {self.band}{blend}: fast {self.cascade.fast_id} ({self.fast.describe()}), "
                f"accurate {self.cascade.accurate_id} ({self.accurate.describe()})")

    def encode(self, texts: list[str]) -> tuple[dict[str, list[list[int]]], list[int]]:
        """The fast model's windows (TextClassifier.encode): what every window is first read as."""
        return self.fast.encode(texts)

    def token_lengths(self, texts: list[str]) -> list[int]:
        return self.fast.token_lengths(texts)

    def windows_per_text(self, texts: list[str]) -> list[int]:
        return self.fast.windows_per_text(texts)

    # The same fold as a plain model's, over this class's window_scores: every window of every text, each
    # column's highest per text.
    score_many = TextClassifier.score_many
    scores = TextClassifier.scores

    def window_scores(self, encoded: dict[str, list[list[int]]], max_texts: int, max_tokens: int,
                      on_pass=None) -> list[list[float]]:
        """Each window's row (module docstring): the labels' scores on the accurate model's scale, then 1.0 if
        the accurate model decided it, else 0.0. Both stages' forward passes are reported to on_pass."""
        labels = len(self._fast_logits)
        fast = np.asarray(self.fast.window_scores(encoded, max_texts, max_tokens, on_pass),
                          dtype=np.float64).reshape(-1, labels)
        moved, unsure = fast_decisions(fast, self._fast_logits, self._accurate_logits, self._bands)
        rows = np.zeros((len(fast), labels + 1))
        rows[:, :labels] = moved
        uncertain = np.flatnonzero(unsure)
        if len(uncertain):
            with self._decoder_lock:
                texts = self._decoder.batch_decode([encoded["input_ids"][i] for i in uncertain],
                                                   skip_special_tokens=True)
            accurate = np.asarray(self.accurate.score_many(texts, max_texts, max_tokens, on_pass), dtype=np.float64)
            rows[uncertain, :labels] = blended(fast[uncertain], accurate, self._blend)
            rows[uncertain, labels] = 1.0
        if self.on_windows is not None and len(fast):
            self.on_windows(FAST, len(fast))
            self.on_windows(ACCURATE, len(uncertain))
        return rows.tolist()
