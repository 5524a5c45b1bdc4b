"""Texts moderated per second over the last minute, per model: what the web page's queue panel shows.

The worker adds each batch's texts to a per-model counter bucketed by second (one pipelined round trip
per batch, never per text); each bucket expires after two windows. The API sums the last WINDOW
buckets with one MGET per model (on a Redis Cluster, where a model's seconds lie in different slots, one GET
per second, pipelined: the cluster client sends each master its share in one round trip).
"""

from __future__ import annotations

import time

import redis

from shared.redis_client import is_cluster

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
    seconds = range(second - WINDOW_SECONDS + 1, second + 1)
    pipe = client.pipeline(transaction=False)
    if is_cluster(client):
        for model in models:
            for s in seconds:
                pipe.get(_bucket(model, s))
        values = pipe.execute()
        counts = [values[i * len(seconds):(i + 1) * len(seconds)] for i in range(len(models))]
    else:
        for model in models:
            pipe.mget([_bucket(model, s) for s in seconds])
        counts = pipe.execute()
    return {model: sum(int(v) for v in values if v) / WINDOW_SECONDS for model, values in zip(models, counts)}
