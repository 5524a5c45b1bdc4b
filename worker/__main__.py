"""`python -m worker`: load the model(s), then run a Celery worker on their queues.

The model is loaded here, before Celery starts, so a broken MODEL_PATH exits non-zero with one
clear log line and the worker never advertises itself (so /readyz stays false). The pool is
Celery's threads pool with one thread: inference runs while the consumer gathers the next batch,
and nothing forks after torch (or CUDA) is initialised. Scale with more worker processes
(one per GPU, or per container), not more threads.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys

from celery import signals
from prometheus_client import start_http_server

from shared.celery_app import celery_app
from shared.config import ConfigError, get_settings
from shared.queues import queue_for_model
from shared.redis_client import make_redis
from worker.healthcheck import write_nodename

log = logging.getLogger("worker")


def serve_metrics(first: int, last: int) -> int:
    """/metrics on the first free port of first..last; returns it."""
    for port in range(first, last):
        try:
            start_http_server(port)
            return port
        except OSError:  # taken (by another replica on this host network): try the next
            continue
    start_http_server(last)  # the last one, or the only one: its error is the one to see
    return last


def main(argv: list[str]) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = get_settings()
    except ConfigError as exc:
        log.critical("configuration error: %s", exc)
        return 2
    from worker.inference import ModelLoadError
    from worker.runtime import load_runtime
    try:
        runtime = load_runtime(settings)
    except ModelLoadError as exc:
        log.critical("model failed to load, exiting: %s", exc)
        return 3
    if settings.worker_metrics_port:
        port = serve_metrics(settings.worker_metrics_port, settings.worker_metrics_port_last)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)

    import worker.tasks  # noqa: F401  (registers the task)
    from worker.heartbeat import Heartbeat
    from worker.redelivery import RedeliverySweeper

    # The random part keeps names unique where containers share a host name and PID numbers
    # (host networking): the registry and the redelivery sweeper key on this name.
    hostname = f"moderation-{os.getpid()}@{socket.gethostname()}.{secrets.token_hex(3)}"
    write_nodename(hostname)
    models = list(settings.worker_models)
    client = make_redis(settings)
    background = [Heartbeat(client, hostname, models),
                  RedeliverySweeper(client, runtime.store, celery_app, hostname, models)]
    signals.worker_ready.connect(lambda **_: [task.start() for task in background], weak=False)
    signals.worker_shutting_down.connect(lambda **_: [task.stop() for task in background], weak=False)

    queues = ",".join(queue_for_model(m) for m in models)
    celery_app.worker_main([
        "worker", "--pool", "threads", "--concurrency", str(settings.worker_concurrency),
        "--queues", queues, "--hostname", hostname, "--without-mingle", "--without-gossip",
        "--loglevel", os.environ.get("LOG_LEVEL", "INFO"), *argv,
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
