"""What the API knows about each configured model, read from its config.json (no torch needed).

The worker loads the weights; the API only needs names, labels and the moderation policy
(thresholds and safe labels) to answer GET /models and to validate the "model" field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.config import Settings
from shared.queues import queue_for_model

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    queue: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    safe_labels: frozenset[str]
    multi_label: bool

    def describe(self) -> dict:
        return {
            "name": self.name,
            "queue": self.queue,
            "labels": list(self.labels),
            "thresholds": dict(self.thresholds),
            "safe_labels": sorted(self.safe_labels),
            "multi_label": self.multi_label,
        }


def read_model_config(path: str) -> dict:
    """The HF config.json of a local model folder; {} when it is missing (the worker reports that)."""
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def build_spec(name: str, path: str, config: dict, settings: Settings) -> ModelSpec:
    """Labels come from id2label; thresholds from the model's own "thresholds" then MODEL_THRESHOLDS."""
    id2label = config.get("id2label") or {}
    labels = tuple(str(id2label[key]) for key in sorted(id2label, key=int))
    thresholds = {label: DEFAULT_THRESHOLD for label in labels}
    for source in (config.get("thresholds") or {}, settings.model_thresholds.get(name, {})):
        thresholds.update({label: float(v) for label, v in source.items() if label in thresholds})
    safe = frozenset(label for label in labels if label.lower() in settings.safe_labels)
    return ModelSpec(
        name=name,
        path=path,
        queue=queue_for_model(name),
        labels=labels,
        thresholds=thresholds,
        safe_labels=safe,
        multi_label=config.get("problem_type") == "multi_label_classification",
    )


def load_specs(settings: Settings) -> dict[str, ModelSpec]:
    return {name: build_spec(name, path, read_model_config(path), settings)
            for name, path in settings.models.items()}
