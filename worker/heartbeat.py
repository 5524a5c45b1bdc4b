"""Advertise this worker in shared/worker_registry.py while Celery is consuming, and renew its lease on the
jobs it claimed (shared/jobs.py: a job under a live lease is not run by another worker). The lease is
not dropped on stop: a consumer restart (lost broker connection) may leave a batch running, and a
lease left to expire costs other workers LEASE_SECONDS only on jobs this worker claimed and never finished."""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis

from shared import worker_registry
from worker.background import BackgroundThread

log = logging.getLogger(__name__)


class Heartbeat(BackgroundThread):
    def __init__(self, client: redis.Redis, hostname: str, models: list[str], renew_lease: Callable[[], None]):
        super().__init__("heartbeat")
        self.client, self.hostname, self.models, self.renew_lease = client, hostname, models, renew_lease

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.renew_lease()
                worker_registry.heartbeat(self.client, self.hostname, self.models)
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            self._stop.wait(worker_registry.HEARTBEAT_INTERVAL)

    def stop(self) -> None:
        super().stop()
        try:
            worker_registry.leave(self.client, self.hostname, self.models)
        except redis.RedisError:
            pass
