"""CELERY_BROKER_URL as a failover list (`amqp://n1;amqp://n2;...`, a RabbitMQ cluster's nodes) whose first node
is down: the API's depth read and publish, and the worker's consumer, go to the next node, at once. And the
quorum queue's replication factor (RABBITMQ_QUORUM_SIZE). On the machine's RabbitMQ, in a private vhost, behind
a first "node" where nothing listens; tests/cluster/ loses a node of a real three-node cluster."""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack

import pytest
import requests

from shared.broker import broker_queues
from shared.celery_app import make_celery, model_queues
from shared.config import load_settings
from shared.queues import queue_for_model
from shared.redis_client import make_redis
from tests.support import RabbitVhost, base_env, free_port, start_api, start_worker, wait_for_job
from worker.delayed_delivery import CELERY_STEP, ClusterDelayedDelivery, Consumer

MODEL = "tiny"


def test_each_model_queue_is_declared_with_three_replicas_unless_told_otherwise():
    def arguments(env: dict) -> dict:
        settings = load_settings({"MODELS": f"{MODEL}=/m", "CELERY_BROKER_URL": "amqp://h//", **env})
        [queue] = model_queues(settings)
        return queue.queue_arguments
    assert arguments({})["x-quorum-initial-group-size"] == 3
    assert arguments({"RABBITMQ_QUORUM_SIZE": "5"})["x-quorum-initial-group-size"] == 5
    # 0: the argument is left out, as queues declared before it were (RabbitMQ refuses a redeclaration that
    # adds it: PRECONDITION_FAILED), and the broker's default applies.
    assert "x-quorum-initial-group-size" not in arguments({"RABBITMQ_QUORUM_SIZE": "0"})


def test_the_worker_consumer_sets_up_delayed_delivery_once_per_cluster():
    steps = Consumer.Blueprint.default_steps
    assert CELERY_STEP not in steps
    assert f"{ClusterDelayedDelivery.__module__}:ClusterDelayedDelivery" in steps


@pytest.fixture(scope="module")
def failover_stack(tiny_multilabel_model, redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("failover-logs")
    with ExitStack() as cleanup:
        vhost = cleanup.enter_context(RabbitVhost(f"test-failover-{uuid.uuid4().hex[:12]}"))
        down = f"amqp://guest:guest@127.0.0.1:{free_port()}/{vhost.name}"  # nothing listens there
        redis_server.client().flushall()
        env = base_env(redis_server.url, MODELS=f"{MODEL}={tiny_multilabel_model}", DEFAULT_MODEL=MODEL,
                       CELERY_BROKER_URL=f"{down};{vhost.url}")
        api = cleanup.enter_context(start_api(env, logs / "api.log"))
        yield env, vhost, api, logs, cleanup


def test_a_list_whose_first_node_is_down_serves_through_the_next(failover_stack):
    env, vhost, api, logs, cleanup = failover_stack
    settings = load_settings(env)
    queues = broker_queues(settings, make_celery(settings), make_redis(settings))
    started = time.monotonic()
    assert queues.depth(queue_for_model(MODEL)) == 0  # the depth read: through the second URL
    assert time.monotonic() - started < 5
    responses = [requests.post(api.url + "/generate", json={"input_text": f"i love my new puppy {i}"}, timeout=30)
                 for i in range(10)]
    assert [r.status_code for r in responses] == [202] * 10, responses[0].text  # published, none refused
    assert queues.depth(queue_for_model(MODEL)) == 10
    arguments = vhost._ctl("list_queues", "-p", vhost.name, "--no-table-headers", "name", "arguments")
    assert "x-quorum-initial-group-size" in arguments, arguments  # a one-node broker keeps one replica
    worker = cleanup.enter_context(start_worker(env, logs / "worker.log", models=[MODEL]))
    for response in responses:
        assert wait_for_job(api.url, response.json()["job_id"], timeout=30)["status"] == "succeeded"
    log = worker.log_tail(1_000_000)
    # Celery's own step would retry the dead URL for 1 + 3 + 5 s before the consumer consumed anything.
    assert "Retrying delayed delivery setup" not in log
    assert "Will retry using next failover" in log  # the consumer did meet the dead node first
