"""Queue and task names: the contract between the API (producer) and the worker (consumer)."""

# The one Celery task. The API sends it by name so it never imports the worker.
MODERATE_TASK = "moderation.moderate"

QUEUE_PREFIX = "moderation."

# Celery's Redis transport keeps each priority level in its own list: "<queue>\x06\x16<priority>".
# These are the default priority steps; queue depth adds them all up.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_for_model(model: str) -> str:
    """Each model has its own queue so a worker consumes only the models it has loaded."""
    return f"{QUEUE_PREFIX}{model}"


def broker_lists(queue: str) -> list[str]:
    """The Redis lists that hold one queue's messages, the plain list first."""
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS if step]


def capture_producer(celery_app):
    """A kombu producer for captured publishes (shared.kombu_redis.captured_publishes), made once per
    process and shared by its threads. Under capture, publishing only builds a message: no I/O on the
    producer's connection (its channel is opened once, on first use) and nothing kept between calls, so
    checking a producer out of Celery's pool for every job is repeated work."""
    return celery_app.amqp.Producer(celery_app.connection_for_write(), auto_declare=False)


def publish_job(celery_app, job_id: str, model: str, enqueued_at: float,
                captured: bool = False, producer=None) -> None:
    """Send one job's task message: (job id, model). The texts stay in the job record alone (one copy in
    Redis; the worker reads them when it claims the job). The task id is the job id; `enqueued_at` feeds
    queue-age metrics.
    captured=True (inside shared.kombu_redis.captured_publishes): the message is only built, so no publish
    retry (nothing is written, nothing to retry) and no queue declaration (kombu would bind the queue to
    the channel again for every message, ~20 us of object copies; the list needs no declaring and the
    worker declares the queues it consumes). `producer`: capture_producer()'s, with captured=True only."""
    # argsrepr/kwargsrepr given: Celery would otherwise saferepr() the args into every message's headers.
    celery_app.send_task(MODERATE_TASK, args=[job_id, model], queue=queue_for_model(model),
                         task_id=job_id, headers={"enqueued_at": enqueued_at},
                         argsrepr=f"[{job_id!r}, {model!r}]", kwargsrepr="{}",
                         retry=not captured, declare=[] if captured else None, producer=producer)
