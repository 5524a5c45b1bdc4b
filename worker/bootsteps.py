"""Worker-side services as Celery bootsteps: they start when the worker's consumer is up and stop
when it shuts down, in Celery's own order (no signal handlers).

- HeartbeatStep advertises the worker in shared/worker_registry.py (what /readyz and /models read).
- RedeliveryStep runs worker/redelivery.py's sweep, only on the Redis transport.
- BatchTimerStep re-arms the batching task's flush timer after a reconnect.
Each runs its loop in a thread of its own: the worker's shared timer also drives celery-batches'
flushes, which a slow Redis call must not delay.
"""

from __future__ import annotations

from celery import bootsteps

from shared.broker import broker_redis
from shared.celery_app import is_redis_url
from shared.queues import MODERATE_TASK
from worker.heartbeat import Heartbeat
from worker.redelivery import RedeliverySweeper
from worker.runtime import get_runtime


def _models() -> list[str]:
    return list(get_runtime().settings.worker_models)


class HeartbeatStep(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.heartbeat: Heartbeat | None = None

    def start(self, consumer):
        runtime = get_runtime()
        self.heartbeat = Heartbeat(runtime.store.redis, consumer.hostname, _models())
        self.heartbeat.start()

    def stop(self, consumer):  # also on a consumer restart (lost broker connection): start() runs again
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    shutdown = stop


class RedeliveryStep(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.sweeper: RedeliverySweeper | None = None

    def include_if(self, consumer):
        return is_redis_url(get_runtime().settings.broker_url)

    def start(self, consumer):
        runtime = get_runtime()
        self.sweeper = RedeliverySweeper(broker_redis(runtime.settings), runtime.store, consumer.app,
                                         consumer.hostname, _models())
        self.sweeper.start()

    def stop(self, consumer):
        if self.sweeper is not None:
            self.sweeper.stop()
            self.sweeper = None

    shutdown = stop


class BatchTimerStep(bootsteps.StartStopStep):
    """Re-arms celery-batches' flush timer each time the consumer (re)connects (worker/tasks.py)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer):
        consumer.app.tasks[MODERATE_TASK].restart_flush_timer()


def install(app) -> None:
    app.steps["consumer"].update([HeartbeatStep, RedeliveryStep, BatchTimerStep])
