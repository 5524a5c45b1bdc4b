"""The API's Prometheus metrics (names from shared/metrics.py) and GET /metrics.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set (api/gunicorn_conf.py) and every worker process
writes its samples there; /metrics aggregates them. Queue depth and age are read from Redis at
scrape time from the broker by a custom collector, so they are right whichever process answers.
"""

from __future__ import annotations

import logging
import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api.contract import operation
from shared import metrics as names
from shared.broker import BROKER_ERRORS

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(names.HTTP_REQUESTS_TOTAL, "HTTP requests answered.",
                        ["endpoint", "method", "status"])
HTTP_DURATION = Histogram(names.HTTP_REQUEST_DURATION_SECONDS, "HTTP request duration.", ["endpoint"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                   10, 30))
JOBS_SUBMITTED = Counter(names.JOBS_SUBMITTED_TOTAL, "Jobs accepted and enqueued.", ["model"])
TEXTS_SUBMITTED = Counter(names.TEXTS_SUBMITTED_TOTAL, "Texts in accepted jobs.", ["model"])
JOBS_CANCELED = Counter(names.JOBS_CANCELED_TOTAL, "Queued jobs canceled by their client.", ["model"])
REJECTED = Counter(names.REQUESTS_REJECTED_TOTAL, "Requests refused, by reason.", ["reason"])
TOKENS = Counter(names.TOKENS_TOTAL, "Tokens counted at the door, by key class and outcome.",
                 ["model", "key_class", "outcome"])
# api/long_polls.py. livesum: the waits in progress in every live gunicorn process, added up.
LONG_POLLS_ACTIVE = Gauge(names.LONG_POLLS_ACTIVE, "Long polls (wait) in progress.", multiprocess_mode="livesum")
LONG_POLLS_REFUSED = Counter(names.LONG_POLLS_REFUSED_TOTAL, "Long polls refused or cut short, by the cap reached.",
                             ["cap"])
LONG_POLL_CAPS = ("process", "key")  # MAX_LONG_POLLS, MAX_LONG_POLLS_PER_KEY

_REASON_BY_STATUS = {400: names.REJECT_INVALID, 404: None, 409: None, 413: names.REJECT_INVALID,
                     415: names.REJECT_INVALID, 401: names.REJECT_UNAUTHORIZED,
                     429: names.REJECT_RATE_LIMITED}  # 503s count themselves (queue_full, unavailable)


class QueueCollector(Collector):
    """moderation_queue_depth / _oldest_job_age_seconds / _parked_messages per model queue, read at scrape time."""

    def __init__(self, broker_queues, queues: list[str]):
        self.broker_queues, self.queues = broker_queues, queues

    def collect(self):
        depth = GaugeMetricFamily(names.QUEUE_DEPTH, "Messages waiting in the queue.", labels=["queue"])
        age = GaugeMetricFamily(names.QUEUE_OLDEST_JOB_AGE_SECONDS,
                                "Age of the oldest waiting message.", labels=["queue"])
        parked = GaugeMetricFamily(names.QUEUE_PARKED_MESSAGES,
                                   "Messages past the broker's delivery limit, parked (RabbitMQ).", labels=["queue"])
        for queue in self.queues:
            try:
                depth.add_metric([queue], self.broker_queues.depth(queue))
                age.add_metric([queue], self.broker_queues.oldest_age(queue))
                parked.add_metric([queue], self.broker_queues.parked(queue))
            except BROKER_ERRORS as exc:
                log.warning("queue metrics unavailable: %s", exc)
                break
        yield depth
        yield age
        yield parked


def _registry(queue_collector: Collector) -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_DefaultRegistryView())
    registry.register(queue_collector)
    return registry


class _DefaultRegistryView(Collector):
    """Single-process mode (flask run, tests): expose the default registry's samples."""

    def collect(self):
        return REGISTRY.collect()


def count_rejection(reason: str) -> None:
    g.rejection_counted = True
    REJECTED.labels(reason).inc()


def count_tokens(model: str, key_class: str, outcome: str, tokens: int) -> None:
    TOKENS.labels(model, key_class, outcome).inc(tokens)


def init_metrics(app: Flask, broker_queues, models: dict[str, str]) -> Blueprint:
    """`models` maps model names to queue names; `broker_queues` reads them (shared/broker.py)."""
    registry = _registry(QueueCollector(broker_queues, list(models.values())))
    # Export every series from the start at 0, so rate() and alerts see the first increment.
    for reason in names.REJECT_REASONS:
        REJECTED.labels(reason)
    for cap in LONG_POLL_CAPS:
        LONG_POLLS_REFUSED.labels(cap)
    for model in models:
        JOBS_SUBMITTED.labels(model)
        TEXTS_SUBMITTED.labels(model)
        JOBS_CANCELED.labels(model)
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    @operation("Prometheus metrics (API and queue)", {200: ("Prometheus text format", "text/plain")},
               rate_limited=False)
    def metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.before_request
    def _start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
        started = getattr(g, "request_started", None)
        if started is not None:
            HTTP_DURATION.labels(endpoint).observe(time.perf_counter() - started)
        reason = _REASON_BY_STATUS.get(response.status_code)
        if reason and not getattr(g, "rejection_counted", False):
            REJECTED.labels(reason).inc()
        return response

    return bp
