"""The project's kombu Redis transport (shared/kombu_redis.py) against a real Redis, pinning the kombu
behaviour it relies on.

- Accepting a job is one round trip: Celery and kombu build the task message, the transport hands over
  the LPUSH instead of sending it, and the create script writes record, pending entry and message at
  once. The captured message is exactly what kombu itself pushes; the API sends one command per job.
- A batch's acknowledgements are one pipeline: inside `batched_acks()` the messages stay in kombu's
  unacked hash and index (a crash there leaves them to the visibility timeout), and leave both at its end.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import redis
import requests
from kombu import Connection

from shared.celery_app import make_celery
from shared.config import load_settings
from shared.jobs import job_key
from shared.kombu_redis import TRANSPORT, batched_acks, captured_publishes
from shared.queues import capture_producer, publish_job, queue_for_model
from tests.support import base_env, start_api, wait_until


def without_delivery_tag(payload: str) -> dict:
    """A kombu Redis message as a dict, minus its delivery tag (a fresh uuid per publish)."""
    message = json.loads(payload)
    message["properties"].pop("delivery_tag")
    return message


def test_a_captured_message_is_what_kombu_pushes_itself(redis_server, redis_client):
    celery = make_celery(load_settings(base_env(redis_server.url)))
    queue, job_id = queue_for_model("capture"), str(uuid.uuid4())
    publish_job(celery, job_id, "capture", ["some text"], 1234.5)
    pushed = redis_client.lpop(queue)
    producer = capture_producer(celery)  # as the API captures: one shared producer, no queue declaration
    with captured_publishes() as captured:
        publish_job(celery, job_id, "capture", ["some text"], 1234.5)
        publish_job(celery, job_id, "capture", ["some text"], 1234.5, captured=True, producer=producer)
    assert redis_client.llen(queue) == 0, "a captured publish wrote to the broker"
    assert [name for name, _ in captured] == [queue, queue]
    assert without_delivery_tag(captured[0][1]) == without_delivery_tag(pushed)
    assert without_delivery_tag(captured[1][1]) == without_delivery_tag(pushed)
    # Outside the block, publishing is back to normal.
    publish_job(celery, job_id, "capture", ["some text"], 1234.5)
    assert redis_client.llen(queue) == 1


@pytest.fixture
def api(redis_server, redis_client, tmp_path):
    server = start_api(base_env(redis_server.url), tmp_path / "api.log")
    yield server
    server.stop()


def test_accepting_a_job_sends_one_command_to_redis(redis_client, api):
    requests.post(api.url + "/generate", json={"input_text": "warm-up"}, timeout=10)  # one-time declares
    commands: list[tuple[str, str]] = []
    monitoring = threading.Event()

    def monitor():
        try:
            with redis_client.monitor() as feed:
                monitoring.set()
                for command in feed.listen():
                    commands.append((command.get("client_type", ""), command["command"]))
        except redis.ConnectionError:  # the test's Redis stopped: the feed ends
            pass

    threading.Thread(target=monitor, daemon=True).start()
    monitoring.wait(5)
    time.sleep(0.2)  # MONITOR is registered once its reply has been read; let it settle
    response = requests.post(api.url + "/generate", json={"input_text": "count my round trips"}, timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    wait_until(lambda: any(job_id in c and kind == "lua" and c.startswith("LPUSH") for kind, c in commands),
               timeout=10, what="the script's LPUSH to show in MONITOR")
    from_api = [c.split()[0] for kind, c in commands if kind != "lua" and job_id in c]
    assert from_api == ["EVALSHA"], commands
    assert redis_client.hget(job_key(job_id), "status") == "queued"


def test_batched_acks_leave_the_unacked_hash_and_index_together_at_the_end(redis_server, redis_client):
    with Connection(redis_server.url, transport=TRANSPORT) as connection:
        queue = connection.SimpleQueue("acks.batched")
        for n in range(5):
            queue.put({"n": n})
        received = [queue.get(timeout=10) for _ in range(5)]
        qos = queue.channel.qos
        assert sorted(m.payload["n"] for m in received) == list(range(5))
        assert redis_client.hlen(qos.unacked_key) == 5 and redis_client.zcard(qos.unacked_index_key) == 5
        with batched_acks():
            for message in received[:4]:
                message.ack()
            # Deferred: still in kombu's visibility protocol until the block ends.
            assert redis_client.hlen(qos.unacked_key) == 5 and redis_client.zcard(qos.unacked_index_key) == 5
        assert redis_client.hlen(qos.unacked_key) == 1 and redis_client.zcard(qos.unacked_index_key) == 1
        received[4].ack()  # outside the block: kombu's own one-message ack
        assert redis_client.hlen(qos.unacked_key) == 0 and redis_client.zcard(qos.unacked_index_key) == 0
        queue.close()
