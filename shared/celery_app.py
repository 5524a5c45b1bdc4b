"""The Celery app, shared by the API (which sends tasks by name) and the worker (which runs them).

Nothing here reads the environment: `celery_app` is a bare app the worker's tasks register on, and
`configure_celery(app, settings)` (called from `python -m worker`'s main and `api.create_app`) sets it up.

Settings chosen so that no accepted job is lost, on either broker:
- acks_late + reject_on_worker_lost: a message is acknowledged only after its job's result is stored;
  a worker that dies mid-batch leaves its messages unacknowledged.
- Redis (`redis://`): visibility_timeout: after that long, Celery's Redis transport puts unacknowledged
  messages back on the queue. It must exceed the longest a message can wait in a worker's prefetch
  buffer plus one batch; worst-case redelivery after a crash is visibility_timeout + unacked_restore_interval.
- RabbitMQ (`amqp://`): durable quorum queues (replicated on RABBITMQ_QUORUM_SIZE nodes, 3 by default; the
  broker itself counts deliveries), publisher confirms (a publish returns only once the broker has the
  message: on a quorum queue, once a majority of its replicas has written it), and the broker
  redelivers a dead consumer's messages as soon as its connection closes. On a cluster CELERY_BROKER_URL
  is Celery's failover list (`amqp://n1;amqp://n2;amqp://n3`): a connection whose node is lost (the
  consumer's, a publish's, the depth read's) goes to the next node of the list. A message past
  x-delivery-limit is dead-lettered at-least-once into its model's parking queue, never dropped
  (RabbitMQ's documented recipe: x-dead-letter-strategy=at-least-once needs x-overflow=reject-publish);
  worker/parking.py publishes parked messages of unfinished jobs again, or fails a poison job.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from shared.config import Settings
from shared.kombu_redis import transport_for
from shared.queues import queue_for_model

# How often a live worker sweeps Redis for unacknowledged messages whose visibility timeout passed.
UNACKED_RESTORE_INTERVAL = 5
# RabbitMQ's own cap on deliveries is a backstop above MAX_DELIVERIES: the worker's own count of deaths
# (worker/deliveries.py) fails a poison job with a clear error first; past the broker's limit the message
# is parked (below) and the reconciler decides.
BROKER_DELIVERY_LIMIT_MARGIN = 5
# Where RabbitMQ dead-letters a message past its delivery limit: one durable quorum queue per model queue.
PARKING_EXCHANGE = "moderation.parked"
PARKED_SUFFIX = ".parked"

celery_app = Celery("moderation", set_as_current=False)


def is_redis_url(url: str) -> bool:
    return url.split("://", 1)[0] in ("redis", "rediss", "redis+socket")


def parking_queue_name(queue: str) -> str:
    return queue + PARKED_SUFFIX


def parking_queue(queue: str) -> Queue:
    """Where `queue`'s messages go past its delivery limit (declared by the worker's reconciler)."""
    return Queue(parking_queue_name(queue), Exchange(PARKING_EXCHANGE, "direct", durable=True),
                 routing_key=parking_queue_name(queue), durable=True, queue_arguments={"x-queue-type": "quorum"})


def model_queues(settings: Settings) -> list[Queue]:
    """One durable quorum queue per model (RabbitMQ); Celery declares them on first use. Changing these
    arguments on an existing queue is refused by RabbitMQ (PRECONDITION_FAILED): see docs/reliability.md."""
    queues = []
    for name in settings.models:
        queue = queue_for_model(name)
        arguments = {"x-queue-type": "quorum",
                     "x-delivery-limit": settings.max_deliveries + BROKER_DELIVERY_LIMIT_MARGIN,
                     "x-dead-letter-exchange": PARKING_EXCHANGE,
                     "x-dead-letter-routing-key": parking_queue_name(queue),
                     "x-dead-letter-strategy": "at-least-once",
                     "x-overflow": "reject-publish"}
        if settings.rabbitmq_quorum_size:  # the replicas (RabbitMQ caps it at the cluster's size)
            arguments["x-quorum-initial-group-size"] = settings.rabbitmq_quorum_size
        queues.append(Queue(queue, routing_key=queue, durable=True, queue_arguments=arguments))
    return queues


def _redis_transport_options(settings: Settings) -> dict:
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
        # The restore sweep holds a Redis lock; a worker killed while holding it would block every
        # sweep until the lock expires (kombu's default: 300 s), past the visibility timeout.
        "unacked_mutex_expire": min(settings.visibility_timeout, 300),
        "socket_timeout": max(settings.redis_socket_timeout, 5.0),
        "socket_connect_timeout": settings.redis_socket_timeout,
        "health_check_interval": 10,
        # Up to a batch of messages per round trip (shared/kombu_redis.py), within the prefetch limit.
        "fetch_max": settings.batch_max_texts,
    }


def configure_celery(app: Celery, settings: Settings) -> Celery:
    redis_broker = is_redis_url(settings.broker_url)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport=transport_for(settings.broker_url),
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in our own job records (shared/jobs.py)
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        # Enough prefetched messages to fill the next batch while the current one runs.
        worker_prefetch_multiplier=max(1, 2 * settings.batch_max_texts // max(1, settings.worker_concurrency)),
        # Celery's task events for every job (worker/task_events.py: celery-batches sends none itself), which
        # `celery events`, Flower and celery-exporter read; WORKER_SEND_TASK_EVENTS=false (or no -E) turns them off.
        worker_send_task_events=settings.worker_send_task_events,
        # No task-sent event: one more Redis PUBLISH per job in the API, and no dashboard or alert uses
        # celery_task_sent_total (moderation_jobs_submitted_total counts accepted jobs).
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.redis_socket_timeout,
        # The API must fail fast (503) when the broker is down instead of retrying a publish for seconds.
        # The one retry goes to the next node of a failover list (kombu switches host on a connection error).
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        # A failover list is tried in its order: the next node after a lost one (kombu's default, explicit).
        broker_failover_strategy="round-robin",
        # A confirm from a quorum queue means a majority of its replicas wrote the message: a node lost
        # after the confirm loses nothing (docs/reliability.md "Clusters").
        broker_transport_options=_redis_transport_options(settings) if redis_broker else {
            "confirm_publish": True},
        # Quorum queues have no global QoS: Celery detects them and uses per-consumer prefetch.
        task_queues=None if redis_broker else model_queues(settings),
        worker_detect_quorum_queues=True,
    )
    return app


def make_celery(settings: Settings) -> Celery:
    """A new configured app (the API's, and tests that publish as the API would)."""
    return configure_celery(Celery("moderation", set_as_current=False), settings)
