"""The Celery app, shared by the API (which sends tasks by name) and the worker (which runs them).

Settings here are chosen so that no accepted job is lost:
- acks_late + reject_on_worker_lost: a message is acknowledged only after its job's result is stored;
  a worker that dies mid-batch leaves its messages unacknowledged in Redis.
- visibility_timeout: after that long, Celery's Redis transport puts unacknowledged messages back on
  the queue. It must exceed the longest a message can wait in a worker's prefetch buffer plus one batch
  (seconds); worst-case redelivery after a crash is visibility_timeout + unacked_restore_interval.
"""

from __future__ import annotations

from celery import Celery

from shared.config import Settings, get_settings
from shared.kombu_redis import transport_for

# How often a live worker sweeps Redis for unacknowledged messages whose visibility timeout passed.
UNACKED_RESTORE_INTERVAL = 5


def make_celery(settings: Settings) -> Celery:
    app = Celery("moderation", broker=settings.broker_url)
    app.conf.update(
        broker_transport=transport_for(settings.broker_url),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in our own job records (shared/jobs.py)
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        # Enough prefetched messages to fill the next batch while the current one runs.
        worker_prefetch_multiplier=max(1, 2 * settings.batch_max_texts // settings.worker_concurrency),
        worker_send_task_events=True,  # celery-exporter reads these
        # No task-sent event: one more Redis PUBLISH per job in the API, and no dashboard or alert uses
        # celery_task_sent_total (moderation_jobs_submitted_total counts accepted jobs).
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.redis_socket_timeout,
        # The API must fail fast (503) when Redis is down instead of retrying a publish for seconds.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
            "unacked_restore_throttle": 1,
            # The restore sweep holds a Redis lock; a worker killed while holding it would block every
            # sweep until the lock expires (kombu's default: 300 s), past the visibility timeout.
            "unacked_mutex_expire": min(settings.visibility_timeout, 300),
            "socket_timeout": max(settings.redis_socket_timeout, 5.0),
            "socket_connect_timeout": settings.redis_socket_timeout,
            "health_check_interval": 10,
        },
    )
    return app


celery_app = make_celery(get_settings())
