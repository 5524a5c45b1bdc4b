"""Result cache: scores of an identical (model, text) seen within CACHE_TTL skip inference.

Keys hold a SHA-256 of the text, never the text itself; values are the raw per-label scores,
so a threshold change applies to cached texts too.
"""

from __future__ import annotations

import hashlib
import json

import redis

from shared.redis_client import is_cluster


class ScoreCache:
    def __init__(self, client: redis.Redis, model_fingerprint: str, ttl_seconds: int):
        self.redis = client
        self.prefix = f"moderation:cache:{model_fingerprint}:"
        self.ttl = ttl_seconds

    def _key(self, text: str) -> str:
        return self.prefix + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()

    def get_many(self, texts: list[str]) -> list[list[float] | None]:
        if not self.ttl or not texts:
            return [None] * len(texts)
        keys = [self._key(t) for t in texts]
        # On a Redis Cluster the keys lie in many slots: one MGET per slot, pipelined (redis-py's mget_nonatomic).
        values = self.redis.mget_nonatomic(keys) if is_cluster(self.redis) else self.redis.mget(keys)
        return [json.loads(v) if v else None for v in values]

    def put_many(self, texts: list[str], scores: list[list[float]]) -> None:
        if not self.ttl or not texts:
            return
        pipe = self.redis.pipeline(transaction=False)
        for text, row in zip(texts, scores):
            pipe.set(self._key(text), json.dumps(row), ex=self.ttl)
        pipe.execute()
