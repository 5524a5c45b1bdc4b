"""Celery remote control of a test worker: hold a queue so that a backlog forms, observably."""

from __future__ import annotations

from contextlib import contextmanager

from shared.celery_app import make_celery
from shared.config import load_settings


@contextmanager
def consumer_paused(env: dict, nodename: str, queue: str):
    """The worker (`python -m worker`, Celery node `nodename`, see scripts/launch.py start_worker) takes
    nothing from `queue` inside the block; what it already prefetched still runs. Both steps wait for the
    worker's reply."""
    control = make_celery(load_settings(env)).control
    destination = [nodename]
    assert control.cancel_consumer(queue, destination=destination, reply=True, timeout=10), "no reply"
    try:
        yield
    finally:
        assert control.add_consumer(queue, destination=destination, reply=True, timeout=10), "no reply"
