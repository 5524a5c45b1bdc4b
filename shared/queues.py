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


def publish_job(celery_app, job_id: str, model: str, texts: list[str], enqueued_at: float,
                retry: bool = True) -> None:
    """Send one job's task message. The task id is the job id; `enqueued_at` feeds queue-age metrics.
    retry=False: no publish retry (a captured publish writes nothing, so there is nothing to retry)."""
    # argsrepr/kwargsrepr given: Celery would otherwise saferepr() the texts into every message's
    # headers, which costs CPU per job and copies user text into anything that logs headers.
    celery_app.send_task(MODERATE_TASK, args=[job_id, model, texts], queue=queue_for_model(model),
                         task_id=job_id, headers={"enqueued_at": enqueued_at},
                         argsrepr=f"[{job_id!r}, {model!r}, <{len(texts)} texts>]", kwargsrepr="{}", retry=retry)
