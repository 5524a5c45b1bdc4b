"""A cascade model's folder: config.json's "cascade" key, in one place.

model/cascade.py writes it, the API reads it (shared/model_registry.py: GET /models, no torch) and the worker
loads the two stages it names (worker/cascade.py). The folder is the accurate model's config.json (labels,
thresholds) with this key added and the fast model's tokenizer files, so everything that reads a plain model
folder (MODELS, the API's token counts) reads it unchanged.

    "cascade": {"fast": "../fast", "accurate": "../accurate",  # stage folders, relative to this folder
                "band": 1.5,                   # logit units around each fast threshold: one for every label,
                                               # or per label: {"hate": 0.5, "violence": 1.5, ...}
                "fast_thresholds": {"hate": 0.4, ...},          # the fast model's, per label
                "blend": {"hate": [0.75, 0.47, 0.55], ...},     # optional: the accurate stage's verdict
                "fast_id": "fast-1a2b3c4d5e6f", "accurate_id": "accurate-..."}  # served ids, when built

Without "blend", the accurate stage's verdict is the accurate model's scores. With it, per label
sigmoid(w_fast * logit(fast score) + w_accurate * logit(accurate score) + bias): the two models' scores
stacked, fitted on validation (model/compare.py), because the pair ranks better than either alone; the
folder's thresholds are then the blend's.

The stages' ids are recorded when the folder is built because the API holds only the folder's metadata
files, not the stages'.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: shared.model_registry imports this module
    from shared.model_registry import ModelSpec

KEY = "cascade"
# The stages, as a cascade's results name the one that decided ("stage") and its metrics count their windows.
FAST, ACCURATE = "fast", "accurate"


@dataclass(frozen=True)
class CascadeConfig:
    fast: str  # stage folders as written: relative to the cascade folder (or absolute)
    accurate: str
    band: float | dict[str, float]  # |logit(score) - logit(fast threshold)| below it, for any label: the
    # accurate stage decides; one number for every label, or one per label
    fast_thresholds: dict[str, float]
    fast_id: str
    accurate_id: str
    blend: dict[str, tuple[float, float, float]] | None = None  # per label (w_fast, w_accurate, bias)

    @classmethod
    def of(cls, config: dict) -> CascadeConfig | None:
        """The "cascade" key of a config.json, or None for a plain model; ValueError when it is malformed."""
        raw = config.get(KEY)
        if raw is None:
            return None
        try:
            fast, accurate = str(raw["fast"]), str(raw["accurate"])
            band = raw["band"]
            band = ({str(label): float(value) for label, value in band.items()} if isinstance(band, dict)
                    else float(band))
            thresholds = {str(label): float(value) for label, value in (raw.get("fast_thresholds") or {}).items()}
            blend = raw.get("blend")
            if blend is not None:
                blend = {str(label): _weights(value) for label, value in blend.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f'config.json\'s "{KEY}" must hold "fast", "accurate" (folders), "band" (a number, '
                             f'or label: number), "fast_thresholds" (label: number) and optionally "blend" (label: '
                             f'[w_fast, w_accurate, bias]): {type(exc).__name__}: {exc}') from None
        bands = band.values() if isinstance(band, dict) else (band,)
        if not all(0 <= value < math.inf for value in bands):
            raise ValueError(f'config.json\'s "{KEY}" band must be numbers >= 0, got {band}')
        return cls(fast, accurate, band, thresholds, str(raw.get("fast_id") or Path(fast).name),
                   str(raw.get("accurate_id") or Path(accurate).name), blend)

    def to_json(self) -> dict:
        written = {"fast": self.fast, "accurate": self.accurate, "band": self.band,
                   "fast_thresholds": dict(self.fast_thresholds), "fast_id": self.fast_id,
                   "accurate_id": self.accurate_id}
        if self.blend is not None:
            written["blend"] = {label: list(weights) for label, weights in self.blend.items()}
        return written

    def band_of(self, label: str) -> float:
        """The label's band (0 for a label a per-label band leaves out: the fast model decides it)."""
        return self.band.get(label, 0.0) if isinstance(self.band, dict) else self.band

    def stage_paths(self, folder: str) -> tuple[str, str]:
        """The fast and accurate stages' folders, relative paths resolved against the cascade folder."""
        return tuple(os.path.normpath(os.path.join(folder, stage)) for stage in (self.fast, self.accurate))

    def with_band(self, override: float | None) -> CascadeConfig:
        """As served: CASCADE_BAND (when set) replaces the folder's band, for every label."""
        return self if override is None else replace(self, band=float(override))

    def describe(self) -> dict:
        """What GET /models shows: the stages' served ids and the band."""
        return {"fast": self.fast_id, "accurate": self.accurate_id, "band": self.band,
                "blended": self.blend is not None}


def _weights(value) -> tuple[float, float, float]:
    w_fast, w_accurate, bias = (float(v) for v in value)
    return w_fast, w_accurate, bias


def check_stages(fast: ModelSpec, accurate: ModelSpec) -> None:
    """A cascade's stages must score the same labels in the same order (each window's row is one model's or
    the other's) with sigmoids (the band and the threshold mapping are in logit units): ValueError otherwise."""
    for stage in (fast, accurate):
        if not stage.labels:
            raise ValueError(f"{stage.path} names no labels (no config.json, or no id2label in it)")
        if not stage.multi_label:
            raise ValueError(f"{stage.path} is not a multi-label model (config.json's problem_type must be "
                             "multi_label_classification): a cascade maps sigmoid scores between its stages")
    if fast.labels != accurate.labels:
        raise ValueError(f"the stages' labels differ: {fast.path} has {list(fast.labels)}, {accurate.path} has "
                         f"{list(accurate.labels)} (a cascade needs the same labels in the same order)")
