"""Celery's native delayed delivery set-up done once per RabbitMQ cluster, not once per node of a failover list.

On quorum queues Celery sends a task with a countdown (the webhook task's retries, worker/webhooks.py) through
RabbitMQ's "native delayed delivery" exchanges, which its consumer step `DelayedDelivery` declares, with the
bindings of the worker's queues, every time the consumer starts. It does so on every URL of CELERY_BROKER_URL,
retrying an unreachable one for 1 + 3 + 5 s, and the consumer consumes only after it. On a cluster those URLs
are nodes of one broker whose definitions every node shares, so with one node lost each consumer (re)start,
the reconnect after that very loss included, waited ~17 s for nothing (tests/cluster: the worker whose node
was killed consumed nothing for 17.4 s). Here, with several URLs, the declarations go once through the failover
list: to the first node that answers. With one URL, Celery's own step runs unchanged.

`Consumer` is Celery's consumer with this step in place of Celery's (`worker_consumer`, set by install()).
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange,
    declare_native_delayed_delivery_exchanges_and_queues,
)

log = logging.getLogger(__name__)

CELERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class ClusterDelayedDelivery(DelayedDelivery):
    def start(self, c) -> None:
        app = c.app
        if not isinstance(app.conf.broker_url, str) or ";" not in app.conf.broker_url:
            super().start(c)  # one broker URL: Celery's own step
            return
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=len(connection.alt))  # each node once, in list order
                declare_native_delayed_delivery_exchanges_and_queues(
                    connection, app.conf.broker_native_delayed_delivery_queue_type)
                for queue in app.amqp.queues.values():
                    bind_queue_to_native_delayed_delivery_exchange(connection, queue)
        except Exception as exc:  # as Celery's step: logged, and the consumer starts all the same
            log.warning("native delayed delivery not set up on any node of the broker list: %s", exc)


class Consumer(CeleryConsumer):
    class Blueprint(CeleryConsumer.Blueprint):
        default_steps = [f"{__name__}:ClusterDelayedDelivery" if step == CELERY_STEP else step
                         for step in CeleryConsumer.Blueprint.default_steps]


def install(app) -> None:
    """Run the worker's consumer with ClusterDelayedDelivery (before worker_main)."""
    if CELERY_STEP not in CeleryConsumer.Blueprint.default_steps:
        raise RuntimeError(f"Celery's consumer has no {CELERY_STEP} step any more: see {__name__}")
    app.conf.worker_consumer = f"{__name__}:Consumer"
