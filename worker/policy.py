"""Turning a model's per-label scores into a moderation result."""

from __future__ import annotations

from shared.model_registry import ModelSpec


def moderation_result(scores: list[float], spec: ModelSpec) -> dict:
    """{"flagged", "categories", "category_scores"} for one text.

    A label is set when its score reaches its threshold; labels that mean "safe" (OK, neutral, ...)
    are reported like any other but never set `flagged`.
    """
    category_scores = {label: round(float(score), 6) for label, score in zip(spec.labels, scores)}
    categories = {label: score >= spec.thresholds[label] for label, score in category_scores.items()}
    flagged = any(hit for label, hit in categories.items() if label not in spec.safe_labels)
    return {"flagged": flagged, "categories": categories, "category_scores": category_scores}
