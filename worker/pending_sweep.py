"""Forget pending entries whose job is gone (RabbitMQ): the oldest-job age must not grow forever.

Every queue has a pending index in the record Redis (shared/jobs.py: `moderation:pending:<queue>`, scored by
publish time); RabbitMQ keeps no enqueue time we can read, so the API's oldest-job age
(moderation_queue_oldest_job_age_seconds, shared/broker.py) is that of the index's lowest score. Finishing or
canceling a job removes its entry, but a record that expires (RESULT_TTL) while still queued leaves it behind,
and the age, with its alert, would then grow for ever. On the Redis transport worker/redelivery.py forgets
such entries during its sweep; on RabbitMQ no re-publisher runs, so this sweep does it.

Every SWEEP_INTERVAL one worker (a lock in the record Redis) looks at the oldest BATCH entries of each of its
queues (the ones the age is read from) and removes those whose record no longer exists or is finished: one
script call per queue, so the check and the removal are atomic (an entry is never removed for a job that is
still waiting) and the work per sweep is bounded. On a Redis Cluster each queue's index is one sorted set per
bucket of jobs (shared/keyspace.py): the sweep reads the oldest entries of every bucket, then checks and removes
them with one call per bucket (the call declares the records it reads, all in the bucket's hash slot).
"""

from __future__ import annotations

import logging

import redis

from shared.keyspace import keyspace_for
from shared.queues import queue_for_model
from shared.redis_client import call_script, run_pipelined
from worker.background import BackgroundThread

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0
BATCH = 500  # entries looked at per queue (per bucket of it, on a cluster: at least CLUSTER_BATCH) and sweep
CLUSTER_BATCH = 32
LOCK_KEY = "moderation:pending-sweep-lock"

# KEYS[1]: one bucket of a queue's pending index, then the records of the entries to look at; ARGV: those
# entries' job ids, in the same order. Removes the entries whose record no longer exists or is finished (checked
# and removed in one step, so an entry is never removed for a job still waiting); returns how many.
_FORGET_GONE_SCRIPT = """
local removed = 0
for i = 2, #KEYS do
  local status = redis.call('HGET', KEYS[i], 'status')
  if not status or status == 'succeeded' or status == 'failed' or status == 'canceled' then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i - 1])
  end
end
return removed
"""


class PendingIndex:
    """The sweep's one store operation (kept here rather than in shared/jobs.py)."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self.keys = keyspace_for(client)
        self._forget_gone = client.register_script(_FORGET_GONE_SCRIPT)

    def forget_gone(self, queue: str, limit: int | None = None) -> int:
        """Remove, among the queue's `limit` oldest pending entries (per bucket), those of expired or finished jobs;
        returns how many were removed. Default: BATCH, or on a cluster BATCH spread over the buckets."""
        limit = limit or (BATCH if self.keys.buckets == 1 else max(CLUSTER_BATCH, BATCH // self.keys.buckets))
        keys = self.keys.pending_keys(queue)

        def heads(pipe):
            for key in keys:
                pipe.zrange(key, 0, limit - 1)
        calls = [(key, ids) for key, ids in zip(keys, run_pipelined(self.redis, heads)) if ids]
        if not calls:
            return 0

        def forget(pipe):
            for key, ids in calls:
                call_script(pipe, self._forget_gone, [key, *map(self.keys.job_key, ids)], ids)
            return [self._forget_gone]
        return sum(int(removed) for removed in run_pipelined(self.redis, forget))


def forget_gone_jobs(index: PendingIndex, models: list[str], limit: int | None = None) -> dict[str, int]:
    """One pass over the models' queues; returns the entries removed per queue (only those with any)."""
    removed = {}
    for model in models:
        queue = queue_for_model(model)
        count = index.forget_gone(queue, limit)
        if count:
            removed[queue] = count
    if removed:
        log.info("forgot the pending entries of expired or finished jobs: %s",
                 ", ".join(f"{queue} {count}" for queue, count in removed.items()))
    return removed


class PendingSweeper(BackgroundThread):
    """The sweep loop, in its own thread (started and stopped by worker/bootsteps.py, on RabbitMQ only)."""

    def __init__(self, client: redis.Redis, hostname: str, models: list[str]):
        super().__init__("pending-sweep")
        self.index, self.hostname, self.models = PendingIndex(client), hostname, models

    def _run(self) -> None:
        first = True
        while not self._stop.wait(0 if first else SWEEP_INTERVAL):
            first = False
            try:
                if self.index.redis.set(LOCK_KEY, self.hostname, nx=True, ex=int(SWEEP_INTERVAL)):
                    forget_gone_jobs(self.index, self.models)
            except Exception as exc:  # the store unreachable: the next sweep tries again
                log.warning("pending sweep failed: %s", exc)
