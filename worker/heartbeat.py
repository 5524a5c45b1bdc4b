"""Advertise this worker in shared/worker_registry.py while Celery is consuming."""

from __future__ import annotations

import logging
import threading

import redis

from shared import worker_registry

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, client: redis.Redis, hostname: str, models: list[str]):
        self.client, self.hostname, self.models = client, hostname, models
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worker_registry.heartbeat(self.client, self.hostname, self.models)
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)
            self._stop.wait(worker_registry.HEARTBEAT_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        try:
            worker_registry.leave(self.client, self.hostname, self.models)
        except redis.RedisError:
            pass
