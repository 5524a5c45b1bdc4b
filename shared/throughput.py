"""Texts moderated per second over the last minute, per model: what the web page's queue panel shows.

The worker adds each batch's texts to a per-model counter bucketed by second (one pipelined round trip
per batch, never per text); each bucket expires after two windows. The API sums the last WINDOW
buckets with one MGET per model.
"""

from __future__ import annotations

import time

import redis

WINDOW_SECONDS = 60
_PREFIX = "moderation:texts-per-second:"


def _bucket(model: str, second: int) -> str:
    return f"{_PREFIX}{model}:{second}"


def add_texts(pipe: redis.client.Pipeline, texts_by_model: dict[str, int], now: float | None = None) -> None:
    """Queue the counter updates on `pipe` (the caller executes it with its other commands)."""
    second = int(now if now is not None else time.time())
    for model, count in texts_by_model.items():
        if count:
            pipe.incrby(_bucket(model, second), count)
            pipe.expire(_bucket(model, second), 2 * WINDOW_SECONDS)


def texts_per_second(client: redis.Redis, models: list[str], now: float | None = None) -> dict[str, float]:
    """Mean texts/s per model over the last WINDOW_SECONDS (the current, partial second included)."""
    second = int(now if now is not None else time.time())
    pipe = client.pipeline(transaction=False)
    for model in models:
        pipe.mget([_bucket(model, s) for s in range(second - WINDOW_SECONDS + 1, second + 1)])
    return {model: sum(int(v) for v in counts if v) / WINDOW_SECONDS for model, counts in zip(models, pipe.execute())}
