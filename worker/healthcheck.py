"""`python -m worker.healthcheck`: exit 0 when this container's worker consumes its queues.

The worker writes its Celery node name to NODENAME_FILE at start; its heartbeat
(worker/heartbeat.py) runs from worker_ready until shutdown. So a fresh heartbeat under that
name in Redis means the model is loaded, Celery is connected and consuming, and Redis answers.
The image's HEALTHCHECK runs this; with one worker per container the file is this worker's.

`python -m worker.healthcheck --dependencies`: exit 0 when the job store answers and the broker takes a
connection: the readiness of the webhook worker, which has no heartbeat. (Liveness, in the Helm chart,
is the process answering on its metrics port: a store outage must restart nothing.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

NODENAME_FILE = Path(tempfile.gettempdir()) / "moderation-worker.nodename"


def write_nodename(hostname: str) -> None:
    NODENAME_FILE.write_text(hostname)


def main() -> int:
    from shared import worker_registry
    from shared.config import get_settings
    from shared.redis_client import STORE_ERRORS, make_redis

    try:
        hostname = NODENAME_FILE.read_text().strip()
    except OSError:
        print("worker not started yet (no node name)", file=sys.stderr)
        return 1
    settings = get_settings()
    try:
        live = worker_registry.is_live(make_redis(settings), hostname, list(settings.worker_models))
    except STORE_ERRORS as exc:
        print(f"Redis unreachable: {exc}", file=sys.stderr)
        return 1
    if not live:
        print(f"{hostname} has no fresh heartbeat: not consuming", file=sys.stderr)
        return 1
    return 0


def dependencies() -> int:
    from shared.celery_app import make_celery
    from shared.config import get_settings
    from shared.redis_client import STORE_ERRORS, make_redis

    settings = get_settings()
    try:
        make_redis(settings).ping()
    except STORE_ERRORS as exc:
        print(f"Redis unreachable: {exc}", file=sys.stderr)
        return 1
    try:
        with make_celery(settings).connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=5)
    except Exception as exc:  # noqa: BLE001 (kombu raises the transport's own errors)
        print(f"broker unreachable: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(dependencies() if sys.argv[1:] == ["--dependencies"] else main())
