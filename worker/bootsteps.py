"""Worker-side services as Celery bootsteps: they start when the worker's consumer is up and stop
when it shuts down, in Celery's own order (no signal handlers).

- HeartbeatStep advertises the worker in shared/worker_registry.py (what /readyz and /models read).
- RedeliveryStep runs worker/redelivery.py's sweep, only on the Redis transport.
- BatchTimerStep re-arms the batching task's flush timer after a reconnect.
- StoreGateStep lets worker/store_gate.py pause and resume this consumer during a job-store outage.
- ParkingStep runs worker/parking.py's reconciler, only on RabbitMQ.
- PendingSweepStep runs worker/pending_sweep.py's sweep, only on RabbitMQ (on Redis, RedeliveryStep's does it).
- LeaseStep (a worker step, not a consumer step: it keeps running while the consumer reconnects to the
  broker) renews the leases of the jobs this process is running (worker/leases.py).
Each runs its loop in a thread of its own: the worker's shared timer also drives celery-batches'
flushes, which a slow Redis call must not delay.
"""

from __future__ import annotations

from celery import bootsteps, signals

from shared.broker import broker_redis
from shared.celery_app import is_redis_url
from shared.queues import MODERATE_TASK, queue_for_model
from worker import delayed_delivery
from worker.deliveries import worker_name
from worker.heartbeat import Heartbeat
from worker.leases import LeaseKeeper
from worker.parking import ParkingReconciler
from worker.pending_sweep import PendingSweeper
from worker.redelivery import RedeliverySweeper
from worker.runtime import get_runtime
from worker.store_gate import GATE


def _models() -> list[str]:
    return list(get_runtime().settings.worker_models)


class BackgroundServiceStep(bootsteps.StartStopStep):
    """Starts the service make_service() builds (an object with start() and stop()) when the consumer is
    up and stops it when the consumer stops, also on a consumer restart (lost broker connection), after
    which start() runs again."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.service = None

    def make_service(self, consumer):
        raise NotImplementedError

    def start(self, consumer):
        self.service = self.make_service(consumer)
        self.service.start()

    def stop(self, consumer):
        if self.service is not None:
            self.service.stop()
            self.service = None

    shutdown = stop


class HeartbeatStep(BackgroundServiceStep):
    def make_service(self, consumer) -> Heartbeat:
        store = get_runtime().store
        return Heartbeat(store.redis, consumer.hostname, _models())


class RedeliveryStep(BackgroundServiceStep):
    def include_if(self, consumer):
        return is_redis_url(get_runtime().settings.broker_url)

    def make_service(self, consumer) -> RedeliverySweeper:
        runtime = get_runtime()
        return RedeliverySweeper(broker_redis(runtime.settings), runtime.store, consumer.app, consumer.hostname,
                                 _models())


class ParkingStep(BackgroundServiceStep):
    def include_if(self, consumer):
        return not is_redis_url(get_runtime().settings.broker_url)

    def make_service(self, consumer) -> ParkingReconciler:
        runtime = get_runtime()
        return ParkingReconciler(consumer.app, runtime.store, runtime.deliveries, consumer.hostname, _models(),
                                 runtime.settings.max_deliveries)


class PendingSweepStep(BackgroundServiceStep):
    def include_if(self, consumer):
        return not is_redis_url(get_runtime().settings.broker_url)

    def make_service(self, consumer) -> PendingSweeper:
        return PendingSweeper(get_runtime().store.redis, consumer.hostname, _models())


class BatchTimerStep(bootsteps.StartStopStep):
    """Re-arms celery-batches' flush timer each time the consumer (re)connects (worker/tasks.py)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer):
        consumer.app.tasks[MODERATE_TASK].restart_flush_timer()


class StoreGateStep(bootsteps.StartStopStep):
    """Hands worker/store_gate.py this consumer on each (re)start; on shutdown, ends any outage wait."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def start(self, consumer):
        GATE.attach(consumer, [queue_for_model(model) for model in _models()])

    def stop(self, consumer):
        GATE.detach()


class LeaseStep(bootsteps.StartStopStep):
    """The lease keeper, for the worker's whole life: started once, stopped at shutdown (after the pool
    finished its batches), never by a consumer restart."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.keeper = None

    def start(self, worker):
        self.keeper = LeaseKeeper(get_runtime().store, worker_name())
        self.keeper.start()

    def stop(self, worker):
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None

    shutdown = stop


def _end_outage_waits(**_) -> None:
    """Warm shutdown waits for running batches: one held for a store outage gives up instead (unacknowledged)."""
    GATE.shutdown()


def install(app) -> None:
    app.steps["consumer"].update([HeartbeatStep, RedeliveryStep, ParkingStep, PendingSweepStep, BatchTimerStep,
                                  StoreGateStep])
    app.steps["worker"].add(LeaseStep)
    delayed_delivery.install(app)  # its set-up once per RabbitMQ cluster, not once per node (a lost one stalls)
    signals.worker_shutting_down.connect(_end_outage_waits, weak=False)
