"""Which texts share a forward pass.

Texts from all jobs in a Celery batch are pooled, sorted by token length (so padding is small),
and cut into forward passes of at most BATCH_MAX_TEXTS texts and BATCH_MAX_TOKENS padded tokens.
"""

from __future__ import annotations


def plan_forward_passes(lengths: list[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Split text indices into length-sorted groups; padded tokens = longest length x group size."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    passes: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so this text is the longest of the group if it joins.
        if current and (len(current) + 1 > max_texts or lengths[index] * (len(current) + 1) > max_tokens):
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes
