"""Where the job store keeps each key: one layout for a plain Redis, one for a Redis Cluster.

A Redis Cluster runs a script (or a MULTI, or a multi-key command) only when every key it touches is in one
hash slot, and a script may touch only the keys it declares. The store's scripts touch a job's record, its
deliveries hash (the lease), its queue's pending index, the webhook outbox and its done channel together,
so on a cluster all of these carry one hash tag; and what used to be one key for every job (a queue's pending
index, the outbox) is split into BUCKETS, so the load spreads over the masters:

- a job's bucket is crc32(job id) mod CLUSTER_BUCKETS (64); the bucket's hash tag `{<tag>}` is in the name of
  the job's record `moderation:job:{<tag>}:<id>`, its deliveries hash `moderation:deliveries:{<tag>}:<id>`, the
  bucket's pending index of each queue `moderation:pending:{<tag>}:<queue>`, its webhook outbox
  `moderation:webhooks:outbox:{<tag>}` and its completions channel `moderation:done:{<tag>}` (sharded pub/sub:
  SPUBLISH, each message "<job id> <payload>"): every script's keys share one slot;
- the tags are chosen so that bucket i's slot lies in the i-th 64th of the 16384 slots (BUCKET_TAGS): a cluster
  whose masters own even, contiguous slot ranges (what `redis-cli --cluster create` makes) holds the same
  number of buckets on each master, give or take one (22/21/21 on three masters), whatever the tags' hashes;
- sweeps (pending index, outbox, redelivery) and readers (oldest job age, pending count) go bucket by bucket
  (shared/jobs.py: pending_oldest, pending_count).

A plain Redis keeps the layout it always had (PLAIN: one bucket, no tags: `moderation:job:<id>`,
`moderation:pending:<queue>`, `moderation:webhooks:outbox`, a done channel per job), so records written
before this module existed, and every tool that reads them, keep working. The code is the same for both:
PLAIN is simply one untagged bucket. The layout follows from the client: keyspace_for(client).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

KEY_PREFIX = "moderation:job:"
DELIVERIES_PREFIX = "moderation:deliveries:"
PENDING_PREFIX = "moderation:pending:"
OUTBOX_KEY = "moderation:webhooks:outbox"
DONE_SUFFIX = ":done"
DONE_SHARD_PREFIX = "moderation:done:"
PROBE_PREFIX = "moderation:store-probe:"

# Buckets on a cluster: enough that three masters hold 22/21/21 of them and up to a dozen masters hold an even
# share within 20%; few enough that a sweep over all of them is a handful of pipelined round trips.
CLUSTER_BUCKETS = 64


def _slot_aligned_tags(count: int) -> tuple[str, ...]:
    """One hash tag per bucket, the i-th hashing into the i-th `count`-th of the slot space."""
    tags = []
    for bucket in range(count):
        suffix = 0
        while key_slot(f"{bucket:02d}.{suffix}".encode()) * count // REDIS_CLUSTER_HASH_SLOTS != bucket:
            suffix += 1
        tags.append(f"{bucket:02d}.{suffix}")
    return tuple(tags)


BUCKET_TAGS = _slot_aligned_tags(CLUSTER_BUCKETS)


@dataclass(frozen=True)
class KeySpace:
    """Key names for `buckets` buckets; `tagged`: hash tags and sharded pub/sub (a cluster)."""

    buckets: int = 1
    tagged: bool = False

    def bucket(self, job_id: str) -> int:
        return zlib.crc32(job_id.encode()) % self.buckets if self.buckets > 1 else 0

    def tag(self, bucket: int) -> str:
        """The bucket's hash tag with braces ("" untagged)."""
        return "{" + BUCKET_TAGS[bucket] + "}" if self.tagged else ""

    def _in(self, job_id: str) -> str:
        return self.tag(self.bucket(job_id)) + ":" if self.tagged else ""

    def job_key(self, job_id: str) -> str:
        return KEY_PREFIX + self._in(job_id) + job_id

    def deliveries_key(self, job_id: str) -> str:
        return DELIVERIES_PREFIX + self._in(job_id) + job_id

    def pending_key(self, queue: str, bucket: int) -> str:
        """One bucket of a queue's pending index (a sorted set of unfinished jobs, by publish time)."""
        return PENDING_PREFIX + (self.tag(bucket) + ":" if self.tagged else "") + queue

    def pending_key_of(self, queue: str, job_id: str) -> str:
        return self.pending_key(queue, self.bucket(job_id))

    def pending_keys(self, queue: str) -> list[str]:
        return [self.pending_key(queue, bucket) for bucket in range(self.buckets)]

    def outbox_key(self, bucket: int) -> str:
        return OUTBOX_KEY + (":" + self.tag(bucket) if self.tagged else "")

    def outbox_key_of(self, job_id: str) -> str:
        return self.outbox_key(self.bucket(job_id))

    def done_channel(self, job_id: str) -> str:
        """Where the job's completion is published: its own channel (PUBLISH), or its bucket's (SPUBLISH)."""
        if self.tagged:
            return DONE_SHARD_PREFIX + self.tag(self.bucket(job_id))
        return f"{KEY_PREFIX}{job_id}{DONE_SUFFIX}"

    def done_channels(self) -> list[str]:
        """The sharded completion channels (a cluster's; none on a plain Redis, where one pattern covers all)."""
        return [DONE_SHARD_PREFIX + self.tag(bucket) for bucket in range(self.buckets)] if self.tagged else []

    def done_message(self, job_id: str, payload: str) -> str:
        return f"{job_id} {payload}" if self.tagged else payload

    @property
    def publish_command(self) -> str:
        return "SPUBLISH" if self.tagged else "PUBLISH"

    def probe_keys(self, owner: str) -> list[str]:
        """Keys a worker writes to see whether the store takes writes: one per bucket on a cluster, so every
        master that holds jobs is asked (a cluster with one master down still takes writes on the others)."""
        if not self.tagged:
            return [PROBE_PREFIX + owner]
        return [PROBE_PREFIX + self.tag(bucket) + ":" + owner for bucket in range(self.buckets)]

    def by_bucket(self, job_ids) -> dict[int, list[str]]:
        """The job ids grouped by bucket, in first-seen order (one script call per group on a cluster)."""
        groups: dict[int, list[str]] = {}
        for job_id in job_ids:
            groups.setdefault(self.bucket(job_id), []).append(job_id)
        return groups


PLAIN = KeySpace()
CLUSTER = KeySpace(CLUSTER_BUCKETS, tagged=True)


def keyspace_for(client) -> KeySpace:
    """The layout a client's server holds: CLUSTER for a RedisCluster (or its pipeline), else PLAIN."""
    return CLUSTER if isinstance(client, RedisCluster) else PLAIN
