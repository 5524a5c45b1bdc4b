"""What the API knows about each configured model, read from its config.json (no torch needed).

The worker loads the weights; the API only needs names, labels and the moderation policy
(thresholds and safe labels) to answer GET /models and to validate the "model" field. Both build
their ModelSpec here, so the served model's id (`model_id`) has one source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from shared.cascade import CascadeConfig
from shared.config import Settings
from shared.queues import queue_for_model

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    model_id: str  # "<folder name>-<version>": what /v1/moderations answers as "model" (see served_model_id)
    queue: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    safe_labels: frozenset[str]
    multi_label: bool
    cascade: CascadeConfig | None = None  # a two-stage cascade (shared/cascade.py), its band as served

    def describe(self) -> dict:
        return {
            "name": self.name,
            "id": self.model_id,
            "queue": self.queue,
            "labels": list(self.labels),
            "thresholds": dict(self.thresholds),
            "safe_labels": sorted(self.safe_labels),
            "multi_label": self.multi_label,
            "cascade": self.cascade.describe() if self.cascade else None,
        }


def read_model_config(path: str) -> dict:
    """The HF config.json of a local model folder; {} when it is missing (the worker reports that)."""
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def served_model_id(path: str, config: dict) -> str:
    """The model folder's name and its version: config.json's "model_version" when the model sets one,
    else the first 12 hex digits of config.json's sha256. The API never sees the weights (its image
    holds only the metadata files), so the hash covers what both sides read: labels, thresholds and
    architecture, which a retrained model changes. Name the version in config.json to be exact."""
    version = str(config.get("model_version") or "").strip()
    if not version:
        try:
            version = hashlib.sha256((Path(path) / "config.json").read_bytes()).hexdigest()[:12]
        except OSError:
            version = "unversioned"
    return f"{Path(path).name}-{version}"


def build_spec(name: str, path: str, config: dict, settings: Settings) -> ModelSpec:
    """Labels come from id2label; thresholds from the model's own "thresholds" then MODEL_THRESHOLDS; a
    cascade's band from its "cascade" key unless CASCADE_BAND is set."""
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    thresholds = {label: DEFAULT_THRESHOLD for label in labels}
    for source in (config.get("thresholds") or {}, settings.model_thresholds.get(name, {})):
        thresholds.update({label: float(v) for label, v in source.items() if label in thresholds})
    safe = frozenset(label for label in labels if label.lower() in settings.safe_labels)
    cascade = CascadeConfig.of(config)
    return ModelSpec(
        name=name,
        path=path,
        model_id=served_model_id(path, config),
        queue=queue_for_model(name),
        labels=labels,
        thresholds=thresholds,
        safe_labels=safe,
        multi_label=config.get("problem_type") == "multi_label_classification",
        cascade=cascade.with_band(settings.cascade_band) if cascade else None,
    )


def load_specs(settings: Settings) -> dict[str, ModelSpec]:
    return {name: build_spec(name, path, read_model_config(path), settings)
            for name, path in settings.models.items()}
