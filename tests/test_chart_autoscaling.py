"""The autoscaling metric, without a cluster: on real Redis and real RabbitMQ, with no worker, N jobs
submitted through the API wait exactly where the rendered KEDA trigger looks.

- Redis broker: LLEN of the trigger's `listName` is N (Celery's Redis transport keeps priority levels
  in separate lists; every other list of the queue is empty, so one list is the whole backlog).
- RabbitMQ: the ready-message count of the trigger's `queueName` (what KEDA's `protocol: amqp` reads
  with a passive queue declare) is N.
Then a consumer takes K messages without acknowledging them, as a worker's prefetch does: the
trigger's count drops to N - K on both brokers (Redis moves them to the `unacked` hash, RabbitMQ counts
them as unacknowledged). docs/deployment.md "Kubernetes" says what that means for scaling down.
"""

from __future__ import annotations

import math
from contextlib import ExitStack

import kombu
import pytest
import redis
import requests

from scripts.chart import configmap_data, of_kind, render, secret_data
from shared.celery_app import make_celery
from shared.queues import broker_lists
from tests.support import base_env, broker_for, start_api, wait_until
from worker.redelivery import UNACKED_HASH

JOBS = 30
HELD = 7  # messages a consumer holds unacknowledged (a worker's prefetch)


def chart_values(broker) -> dict:
    """values-dev.yaml, on this test's broker. RabbitMQ: the `amqp` protocol (ready messages, a passive
    declare; this RabbitMQ has no management plugin for `http`), which needs minReplicas >= 1."""
    if broker.is_redis:
        return {}
    return {"broker.kind": "rabbitmq", "broker.rabbitmq.url": broker.url, "broker.rabbitmq.protocol": "amqp",
            "workerDefaults.autoscaling.minReplicas": 1}


def trigger_of(docs: list[dict]) -> dict:
    (scaled,) = of_kind(docs, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    return trigger


def trigger_backlog(broker, trigger: dict) -> int:
    """The number the rendered trigger makes KEDA read."""
    if trigger["type"] == "redis":
        return redis.Redis.from_url(broker.url).llen(trigger["metadata"]["listName"])
    assert trigger["metadata"]["protocol"] == "amqp"
    with kombu.Connection(broker.url) as connection:
        return connection.default_channel.queue_declare(queue=trigger["metadata"]["queueName"],
                                                        passive=True).message_count


@pytest.fixture(scope="module")
def stack(broker_kind, redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp(f"chart-autoscaling-{broker_kind}")
    with ExitStack() as cleanup:
        broker = cleanup.enter_context(broker_for(broker_kind, redis_server.url))
        docs = render("dev", chart_values(broker))
        config, secret = configmap_data(docs), secret_data(docs)
        # The rendered settings, less what points into the cluster: the model folder (the image's) and
        # the Redis Service (this test's Redis instead).
        model = config["DEFAULT_MODEL"]
        env = base_env(redis_server.url, **{k: v for k, v in config.items() if k not in ("MODELS", "LOG_LEVEL")},
                       MODELS=f"{model}={tiny_multilabel_model}",
                       CELERY_BROKER_URL=secret.get("CELERY_BROKER_URL", ""))
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        if broker_kind == "rabbitmq":
            # Declare the queue as the service does (quorum) before the count is read.
            make_celery(broker.settings(env)).connection_for_write().ensure_connection(max_retries=3)
        yield broker, docs, api, model


def test_the_trigger_reads_exactly_the_backlog(stack, broker_kind):
    broker, docs, api, model = stack
    trigger = trigger_of(docs)
    before = trigger_backlog(broker, trigger) if trigger["type"] == "redis" else 0
    assert before == 0
    session = requests.Session()
    for i in range(JOBS):
        response = session.post(f"{api.url}/generate", json={"input_text": f"job {i}"}, timeout=10)
        assert response.status_code == 202, response.text
    backlog = trigger_backlog(broker, trigger)
    target = int(trigger["metadata"].get("listLength") or trigger["metadata"]["value"])
    print(f"\n[{broker_kind}] {JOBS} jobs submitted, no worker: trigger {trigger['type']} "
          f"{trigger['metadata'].get('listName') or trigger['metadata'].get('queueName')} reads {backlog}; "
          f"target {target}/replica -> KEDA asks for {math.ceil(backlog / target)} replica(s)")
    assert backlog == JOBS
    if broker.is_redis:
        # The other priority lists of the queue hold nothing: the one list is the whole backlog.
        client = redis.Redis.from_url(broker.url)
        lengths = {key: client.llen(key) for key in broker_lists(trigger["metadata"]["listName"])}
        assert sum(lengths.values()) == lengths[trigger["metadata"]["listName"]] == JOBS, lengths
        assert client.hlen(UNACKED_HASH) == 0


def test_messages_a_consumer_holds_are_not_in_the_trigger_count(stack, broker_kind):
    broker, docs, api, model = stack
    trigger = trigger_of(docs)
    queue_name = trigger["metadata"].get("listName") or trigger["metadata"]["queueName"]
    waiting = trigger_backlog(broker, trigger)
    assert waiting == JOBS, "runs after test_the_trigger_reads_exactly_the_backlog"
    held: list = []
    with kombu.Connection(broker.url) as connection:
        queue = kombu.Queue(queue_name, no_declare=True)
        with kombu.Consumer(connection.channel(), [queue], prefetch_count=HELD,
                            callbacks=[lambda body, message: held.append(message)]):
            while len(held) < HELD:
                try:
                    connection.drain_events(timeout=5)
                except TimeoutError:
                    break
            assert len(held) == HELD, f"the consumer got {len(held)} messages"
            during = trigger_backlog(broker, trigger)
            # rabbitmqctl's per-queue figures are refreshed every few seconds: wait for them.
            wait_until(lambda: broker.unacked(queue_name) == HELD, timeout=60, interval=0.5,
                       what=f"{HELD} unacknowledged messages in {queue_name}")
            unacked = broker.unacked(queue_name)
            print(f"\n[{broker_kind}] a consumer holds {HELD} unacknowledged: trigger reads {during}, "
                  f"unacknowledged {unacked}, ready + unacknowledged {during + unacked}")
            assert during == JOBS - HELD
            for message in held:
                message.requeue()
    assert trigger_backlog(broker, trigger) == JOBS
