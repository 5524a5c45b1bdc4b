"""A cascade model's folder: config.json's "cascade" key, in one place.

model/cascade.py writes it, the API reads it (shared/model_registry.py: GET /models, no torch) and the worker
loads the two stages it names (worker/cascade.py). The folder is the accurate model's config.json (labels,
thresholds) with this key added and the fast model's tokenizer files, so everything that reads a plain model
folder (MODELS, the API's token counts) reads it unchanged.

    "cascade": {"fast": "../fast", "accurate": "../accurate",  # stage folders, relative to this folder
                "band": 1.5,                                    # logit units around each fast threshold
                "fast_thresholds": {"hate": 0.4, ...},          # the fast model's, per label
                "fast_id": "fast-1a2b3c4d5e6f", "accurate_id": "accurate-..."}  # served ids, when built

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
    band: float  # |logit(score) - logit(fast threshold)| below it, for any label: the accurate model decides
    fast_thresholds: dict[str, float]
    fast_id: str
    accurate_id: str

    @classmethod
    def of(cls, config: dict) -> CascadeConfig | None:
        """The "cascade" key of a config.json, or None for a plain model; ValueError when it is malformed."""
        raw = config.get(KEY)
        if raw is None:
            return None
        try:
            fast, accurate = str(raw["fast"]), str(raw["accurate"])
            band = float(raw["band"])
            thresholds = {str(label): float(value) for label, value in (raw.get("fast_thresholds") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f'config.json\'s "{KEY}" must hold "fast", "accurate" (folders), "band" (a number) '
                             f'and "fast_thresholds" (label: number): {type(exc).__name__}: {exc}') from None
        if not 0 <= band < math.inf:
            raise ValueError(f'config.json\'s "{KEY}" band must be a number >= 0, got {band}')
        return cls(fast, accurate, band, thresholds, str(raw.get("fast_id") or Path(fast).name),
                   str(raw.get("accurate_id") or Path(accurate).name))

    def to_json(self) -> dict:
        return {"fast": self.fast, "accurate": self.accurate, "band": self.band,
                "fast_thresholds": dict(self.fast_thresholds), "fast_id": self.fast_id,
                "accurate_id": self.accurate_id}

    def stage_paths(self, folder: str) -> tuple[str, str]:
        """The fast and accurate stages' folders, relative paths resolved against the cascade folder."""
        return tuple(os.path.normpath(os.path.join(folder, stage)) for stage in (self.fast, self.accurate))

    def with_band(self, override: float | None) -> CascadeConfig:
        """As served: CASCADE_BAND (when set) replaces the folder's band."""
        return self if override is None else replace(self, band=float(override))

    def describe(self) -> dict:
        """What GET /models shows: the stages' served ids and the band."""
        return {"fast": self.fast_id, "accurate": self.accurate_id, "band": self.band}


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
