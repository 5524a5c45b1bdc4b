"""GET /queue: per-model queue depth, oldest job age, live workers and texts/s (the web page's panel).

Depth and age are read from the broker through shared/broker.py, the same reader as /metrics'
queue gauges (api/metrics.py), so the two agree whichever broker runs: the record Redis, a separate
broker Redis (CELERY_BROKER_URL) or RabbitMQ. Live workers and texts/s live in the record Redis.
"""

from __future__ import annotations

from flask import Blueprint

from api import schemas as s
from api.contract import operation, reply
from api.extensions import services
from shared.throughput import WINDOW_SECONDS, texts_per_second
from shared.worker_registry import live_workers

bp = Blueprint("queue", __name__)


@bp.get("/queue")
@operation("Queue depth, oldest job age, live workers and texts/s over the last minute, per model",
           {200: ("Queue statistics", s.QueueStats)}, errors=(503,))
def queue():
    svc = services()
    names = list(svc.models)
    workers = live_workers(svc.redis, names)
    rates = texts_per_second(svc.redis, names)
    broker = svc.queues  # shared/broker.py; a broker outage raises, answered 503 (api/__init__.py)
    return reply(s.QueueStats(window_seconds=WINDOW_SECONDS, models=[
        s.QueueModelStats(model=name, queue=spec.queue, depth=broker.depth(spec.queue),
                          oldest_job_age_seconds=round(broker.oldest_age(spec.queue), 3),
                          live_workers=workers[name], texts_per_second=round(rates[name], 3))
        for name, spec in svc.models.items()]))
