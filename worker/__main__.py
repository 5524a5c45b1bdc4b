"""`python -m worker`: load the model(s), then run a Celery worker on their queues.

Settings are read here, in main: a malformed environment variable exits 2 with one log line, and a
model that cannot load exits 3 before the worker consumes anything or advertises itself (so /readyz
stays false). The pool is Celery's threads pool: one thread per batch in flight (WORKER_CONCURRENCY; by
default one per core on CPU, each pass on one thread, and one on a GPU: worker/runtime.py), so inference
runs while the consumer gathers the next batch, and nothing forks after torch (or CUDA) is initialised.
Scale further with more worker processes (one per GPU, or per container, or `make run WORKERS=N`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from prometheus_client import start_http_server

from shared.celery_app import celery_app, configure_celery
from shared.config import ConfigError, get_settings
from shared.queues import queue_for_model
from worker.healthcheck import write_nodename

log = logging.getLogger("worker")

EXIT_CONFIG_ERROR = 2
EXIT_MODEL_LOAD_ERROR = 3


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
    from shared.redis_client import check_broker_outside_cluster
    try:
        settings = get_settings()
        check_broker_outside_cluster(settings)  # REDIS_CLUSTER: a Redis broker must not be a cluster node
    except ConfigError as exc:
        log.critical("configuration error: %s", exc)
        return EXIT_CONFIG_ERROR
    from worker.inference import ModelLoadError
    from worker.runtime import load_runtime
    try:
        settings = load_runtime(settings).settings  # WORKER_CONCURRENCY resolved for this device
    except ModelLoadError as exc:
        log.critical("model failed to load, exiting: %s", exc)
        return EXIT_MODEL_LOAD_ERROR
    if settings.worker_metrics_port:
        port = serve_metrics(settings.worker_metrics_port, settings.worker_metrics_port_last)
        log.info("metrics on http://0.0.0.0:%d/metrics", port)

    from worker import bootsteps, tasks
    configure_celery(celery_app, settings)
    tasks.configure_batching(settings)
    bootsteps.install(celery_app)

    from worker.deliveries import worker_name
    hostname = worker_name()
    write_nodename(hostname)  # for the container's healthcheck (worker/healthcheck.py)
    # Webhook deliveries run in their own small process (worker/webhooks.py), never on the batch threads.
    webhooks = subprocess.Popen([sys.executable, "-m", "worker.webhooks"]) if settings.webhook_allowed_hosts \
        else None
    queues = ",".join(queue_for_model(m) for m in settings.worker_models)
    celery_app.worker_main([
        "worker", "--pool", "threads", "--concurrency", str(settings.worker_concurrency),
        "--queues", queues, "--hostname", hostname, "--without-mingle", "--without-gossip",
        "--loglevel", os.environ.get("LOG_LEVEL", "INFO"), *argv,
    ])
    if webhooks:
        webhooks.terminate()
        webhooks.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
