"""Advertise this worker in shared/worker_registry.py while Celery is consuming (what /readyz and /models
read). The leases of the jobs it runs are renewed elsewhere (worker/leases.py), independent of the broker."""

from __future__ import annotations

import logging

import redis

from shared import worker_registry
from shared.redis_client import STORE_ERRORS
from worker.background import BackgroundThread

log = logging.getLogger(__name__)


class Heartbeat(BackgroundThread):
    def __init__(self, client: redis.Redis, hostname: str, models: list[str]):
        super().__init__("heartbeat")
        self.client, self.hostname, self.models = client, hostname, models

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worker_registry.heartbeat(self.client, self.hostname, self.models)
            except STORE_ERRORS as exc:
                log.warning("heartbeat failed: %s", exc)
            self._stop.wait(worker_registry.HEARTBEAT_INTERVAL)

    def stop(self) -> None:
        super().stop()
        try:
            worker_registry.leave(self.client, self.hostname, self.models)
        except STORE_ERRORS:
            pass
