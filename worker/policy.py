"""Turning a model's per-label scores into a moderation result."""

from __future__ import annotations

from shared.model_registry import ModelSpec
from worker.cascade import stage_of


def moderation_result(scores: list[float], spec: ModelSpec) -> dict:
    """{"flagged", "categories", "category_scores"} for one text, and a cascade's "stage".

    A label is set when its score reaches its threshold; labels that mean "safe" (OK, neutral, ...)
    are reported like any other but never set `flagged`. A cascade model's row carries, after the labels'
    scores, which stage decided the text (worker/cascade.py): the result names it.
    """
    category_scores = {label: round(float(score), 6) for label, score in zip(spec.labels, scores)}
    categories = {label: score >= spec.thresholds[label] for label, score in category_scores.items()}
    flagged = any(hit for label, hit in categories.items() if label not in spec.safe_labels)
    result = {"flagged": flagged, "categories": categories, "category_scores": category_scores}
    if spec.cascade is not None:
        result["stage"] = stage_of(scores, len(spec.labels))
    return result
