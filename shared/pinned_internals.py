"""The libraries whose private parts this code overrides or calls, and the versions it was written against.

- kombu: shared/kombu_redis.py overrides `Channel.conn_or_acquire` of the Redis transport and calls its
  `_create_client()` and `pool`; its `Channel._brpop_read` is kombu's (BRPOP reply parsing, `_queue_cycle`,
  `_in_poll`, `_flush_brpop_reauth`) plus the fetch script, which writes kombu's unacked entries itself
  (QoS.append's `[message, exchange, routing_key]` JSON in `unacked`, the time in `unacked_index`:
  tests/test_kombu_redis.py pins that format against the stock transport), and its QoS.append skips
  `recorded` tags (virtual QoS.append only).
- celery-batches: worker/tasks.py subclasses `Batches` (its flush, `_pool`, `_tref`) and calls
  `celery_batches.trace.apply_batches_task`.
- celery: celery-batches supports only a range of it, and the worker's bootsteps hook into its consumer;
  worker/tasks.py acknowledges a batch through `Consumer.call_soon` and `Request.message`/`acknowledged`,
  as Celery's own `Request.acknowledge()` does one message at a time, and then calls
  `Consumer._restore_prefetch_count_after_connection_restart` per ack as Celery's ack promise does.
  worker/delayed_delivery.py swaps the consumer blueprint's `DelayedDelivery` step (its path in
  `Consumer.Blueprint.default_steps`) for a subclass that sets delayed delivery up once per RabbitMQ cluster.
  worker/task_events.py sends Celery's task events through `Consumer.event_dispatcher` (deciding as
  `EventDispatcher.send` does from `enabled` and `groups`), with the fields of Celery's strategy and
  tracer, on celery-batches' `task_received` signal; it sets `Request.time_start` and counts into
  `celery.worker.state.total_count`/`all_total_count` as `state.task_accepted` does (heartbeats' `processed`).

The one source of these versions: requirements/*.txt pin them (and `make lock` locks them) to the same
numbers, and tests/test_versions.py fails loudly while what is installed differs. Moving to another
version means reading that code against the new release first, then changing all three together.
"""

from __future__ import annotations

WRITTEN_AGAINST = {"celery": "5.6.3", "kombu": "5.7.0", "celery-batches": "0.11"}
