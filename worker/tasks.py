"""The Celery task. Only tasks here; the work is in worker/pipeline.py.

`moderate` is a celery-batches task: the worker buffers incoming messages and calls it with a list
of up to BATCH_MAX_TEXTS requests, or with what arrived within BATCH_MAX_WAIT_MS of the first.
"""

from __future__ import annotations

from celery_batches import Batches, SimpleRequest
from celery_batches.trace import apply_batches_task

from shared.celery_app import celery_app
from shared.config import get_settings
from shared.queues import MODERATE_TASK
from worker.pipeline import process_batch
from worker.runtime import get_runtime

_settings = get_settings()


class AckStoredBatches(Batches):
    """Batches that acknowledges only requests whose outcome was stored.

    celery-batches acknowledges every late-ack request when the batch returns, even after an
    exception. Here the task returns the ids it stored; the rest are requeued (or, if Redis is
    down, stay unacknowledged until the visibility timeout brings them back).
    """

    def flush(self, requests):
        requests = list(requests)
        payload = ([SimpleRequest.from_request(r) for r in requests],)

        def on_return(stored_ids):
            stored = set(stored_ids or ())
            for request in requests:
                if request.id in stored:
                    request.acknowledge()
                else:
                    request.reject(requeue=True)

        return self._pool.apply_async(apply_batches_task, (self, payload, 0, None), callback=on_return)


@celery_app.task(
    name=MODERATE_TASK,
    base=AckStoredBatches,
    flush_every=_settings.batch_max_texts,
    flush_interval=_settings.batch_max_wait_ms / 1000.0,
    acks_late=True,
)
def moderate(requests):
    return process_batch(get_runtime(), requests)
