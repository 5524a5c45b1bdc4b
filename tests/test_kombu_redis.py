"""The project's kombu Redis transport (shared/kombu_redis.py) against a real Redis, pinning the kombu
behaviour it relies on.

- Accepting a job is one round trip: Celery and kombu build the task message, the transport hands over
  the LPUSH instead of sending it, and the create script writes record, pending entry and message at
  once. The captured message is exactly what kombu itself pushes; the API sends one command per job.
- A batch's acknowledgements are one pipeline: inside `batched_acks()` the messages stay in kombu's
  unacked hash and index (a crash there leaves them to the visibility timeout), and leave both at its end.
- A fetch is one script call: the message BRPOP popped and up to `fetch_max` - 1 more (within the
  prefetch limit) are recorded in the unacked hash and index exactly as kombu's QoS.append records one,
  so kombu's restore at shutdown and after the visibility timeout bring them back.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import pytest
import redis
import requests
from kombu import Connection
from kombu.utils.json import dumps as kombu_dumps

from shared import metrics as names
from shared.celery_app import make_celery
from shared.config import load_settings
from shared.jobs import job_key
from shared.kombu_redis import TRANSPORT, batched_acks, captured_publishes
from shared.queues import capture_producer, publish_job, queue_for_model
from tests import scrape
from tests.support import base_env, start_api, start_worker, wait_for_job, wait_until


def without_delivery_tag(payload: str) -> dict:
    """A kombu Redis message as a dict, minus its delivery tag (a fresh uuid per publish)."""
    message = json.loads(payload)
    message["properties"].pop("delivery_tag")
    return message


def test_a_captured_message_is_what_kombu_pushes_itself(redis_server, redis_client):
    celery = make_celery(load_settings(base_env(redis_server.url)))
    queue, job_id = queue_for_model("capture"), str(uuid.uuid4())
    publish_job(celery, job_id, "capture", 1234.5)
    pushed = redis_client.lpop(queue)
    producer = capture_producer(celery)  # as the API captures: one shared producer, no queue declaration
    with captured_publishes() as captured:
        publish_job(celery, job_id, "capture", 1234.5)
        publish_job(celery, job_id, "capture", 1234.5, captured=True, producer=producer)
    assert redis_client.llen(queue) == 0, "a captured publish wrote to the broker"
    assert [name for name, _ in captured] == [queue, queue]
    assert without_delivery_tag(captured[0][1]) == without_delivery_tag(pushed)
    assert without_delivery_tag(captured[1][1]) == without_delivery_tag(pushed)
    # Outside the block, publishing is back to normal.
    publish_job(celery, job_id, "capture", 1234.5)
    assert redis_client.llen(queue) == 1


@pytest.fixture
def api(redis_server, redis_client, tmp_path):
    server = start_api(base_env(redis_server.url), tmp_path / "api.log")
    yield server
    server.stop()


def test_accepting_a_job_sends_one_command_to_redis(redis_client, api):
    requests.post(api.url + "/generate", json={"input_text": "warm-up"}, timeout=10)  # one-time declares
    commands = watch_commands(redis_client)
    response = requests.post(api.url + "/generate", json={"input_text": "count my round trips"}, timeout=10)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    wait_until(lambda: any(job_id in c and kind == "lua" and c.startswith("LPUSH") for kind, c in commands),
               timeout=10, what="the script's LPUSH to show in MONITOR")
    from_api = [c.split()[0] for kind, c in commands if kind != "lua" and job_id in c]
    assert from_api == ["EVALSHA"], commands
    assert redis_client.hget(job_key(job_id), "status") == "queued"


def put_and_receive(connection, name: str, count: int):
    """A SimpleQueue holding messages {"n": 0..count-1}, and those messages received (unacknowledged)."""
    queue = connection.SimpleQueue(name)
    for n in range(count):
        queue.put({"n": n})
    return queue, [queue.get(timeout=10) for _ in range(count)]


def test_batched_acks_leave_the_unacked_hash_and_index_together_at_the_end(redis_server, redis_client):
    with Connection(redis_server.url, transport=TRANSPORT) as connection:
        queue, received = put_and_receive(connection, "acks.batched", 5)
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


def test_a_failed_batch_ack_frees_the_prefetch_slots_and_leaves_the_messages_to_the_visibility_timeout(
        redis_server, redis_client, monkeypatch):
    with Connection(redis_server.url, transport=TRANSPORT) as connection:
        queue, received = put_and_receive(connection, "acks.failed", 3)
        qos = queue.channel.qos
        assert len(qos._delivered) == 3 and not qos._dirty

        def broker_gone(self, *args, **kwargs):  # the network edge: the broker does not answer
            raise redis.ConnectionError("Timeout reading from the broker")

        with monkeypatch.context() as patch:
            patch.setattr(redis.client.Pipeline, "execute", broker_gone)
            with pytest.raises(redis.ConnectionError), batched_acks():
                for message in received[:2]:
                    message.ack()
        # No prefetch slot held by the failed acks (kombu counts delivered minus acked: `_dirty`).
        assert set(qos._delivered) - qos._dirty == {received[2].delivery_tag}
        assert redis_client.hlen(qos.unacked_key) == 3  # still the broker's to restore after the timeout
        received[2].ack()
        queue.close()


def kombu_entry(message) -> list:
    """What kombu's own QoS.append writes to the unacked hash for a message, parsed."""
    return json.loads(kombu_dumps([message._raw, message.delivery_info["exchange"],
                                   message.delivery_info["routing_key"]]))


def test_kombus_own_unacked_entry_is_what_the_fetch_script_writes(redis_server, redis_client):
    """Pins kombu's QoS.append (the stock transport): the entry kombu_entry() expects is kombu's own."""
    with Connection(redis_server.url, transport="redis") as connection:
        queue = connection.SimpleQueue("fetch.stock")
        queue.put({"n": 0})
        message = queue.get(timeout=10)
        qos = queue.channel.qos
        assert json.loads(redis_client.hget(qos.unacked_key, message.delivery_tag)) == kombu_entry(message)
        assert redis_client.zscore(qos.unacked_index_key, message.delivery_tag) is not None
        message.ack()
        queue.close()


def watch_commands(redis_client) -> list[tuple[str, str]]:
    """Redis commands seen from now on (MONITOR), as (client type, command line)."""
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
    return commands


def test_one_script_call_records_the_popped_message_and_fetches_more_as_kombu_would(redis_server, redis_client):
    with Connection(redis_server.url, transport=TRANSPORT, transport_options={"fetch_max": 4}) as connection:
        queue = connection.SimpleQueue("fetch.group")
        for n in range(6):
            queue.put({"n": n})
        qos = queue.channel.qos
        commands = watch_commands(redis_client)
        first = queue.get(timeout=10)
        # The BRPOP's message and three more (fetch_max in all) left the list and are recorded unacknowledged.
        assert redis_client.llen("fetch.group") == 2
        assert redis_client.hlen(qos.unacked_key) == 4 and redis_client.zcard(qos.unacked_index_key) == 4
        received = [first] + [queue.get(timeout=1) for _ in range(3)]
        assert [m.payload["n"] for m in received] == [0, 1, 2, 3]  # FIFO, as one BRPOP per message
        for message in received:  # each entry is what QoS.append writes (restore_visible reads these)
            assert json.loads(redis_client.hget(qos.unacked_key, message.delivery_tag)) == kombu_entry(message)
        wait_until(lambda: any(c.split()[0].strip('"') == "EVALSHA" for _, c in commands), timeout=5,
                   what="the script call")
        sent = [c.split()[0].strip('"') for kind, c in commands if kind != "lua"]
        # One BRPOP and the script (EVALSHA; the first call on a fresh Redis also loads it) for the four; no
        # ZADD/HSET of QoS.append's own.
        assert sent.count("BRPOP") == 1 and "EVALSHA" in sent, sent
        assert "ZADD" not in sent and "HSET" not in sent, sent
        with batched_acks():
            for message in received:
                message.ack()
        assert redis_client.hlen(qos.unacked_key) == 0 and redis_client.zcard(qos.unacked_index_key) == 0
        queue.close()


def test_a_fetch_stays_within_the_prefetch_limit(redis_server, redis_client):
    with Connection(redis_server.url, transport=TRANSPORT, transport_options={"fetch_max": 32}) as connection:
        queue = connection.SimpleQueue("fetch.prefetch")
        queue.consumer.qos(prefetch_count=3)
        for n in range(10):
            queue.put({"n": n})
        queue.get(timeout=10)
        assert redis_client.llen("fetch.prefetch") == 7
        assert redis_client.hlen(queue.channel.qos.unacked_key) == 3
        queue.close()


def test_fetched_unacknowledged_messages_go_back_at_shutdown_and_after_the_visibility_timeout(
        redis_server, redis_client):
    options = {"fetch_max": 4, "visibility_timeout": 1}
    with Connection(redis_server.url, transport=TRANSPORT, transport_options=options) as connection:
        queue = connection.SimpleQueue("fetch.restore")
        for n in range(3):
            queue.put({"n": n})
        queue.get(timeout=10)
        assert redis_client.llen("fetch.restore") == 0 and redis_client.hlen("unacked") == 3
        queue.close()
    # kombu's restore at shutdown put back the one delivered to the consumer and the two buffered.
    assert redis_client.llen("fetch.restore") == 3 and redis_client.hlen("unacked") == 0

    # A consumer that dies without closing: kombu's visibility timeout restores what the script recorded.
    connection = Connection(redis_server.url, transport=TRANSPORT, transport_options=options)
    queue = connection.SimpleQueue("fetch.restore")
    queue.get(timeout=10)
    queue.channel.qos.restore_at_shutdown = False  # as if killed
    assert redis_client.llen("fetch.restore") == 0 and redis_client.hlen("unacked") == 3
    with Connection(redis_server.url, transport=TRANSPORT, transport_options=options) as other:
        qos = other.default_channel.qos
        time.sleep(1.2)
        qos.restore_visible(num=10, interval=1)
    assert redis_client.llen("fetch.restore") == 3 and redis_client.hlen("unacked") == 0
    assert sorted(json.loads(base64.b64decode(json.loads(m)["body"]))["n"]
                  for m in redis_client.lrange("fetch.restore", 0, -1)) == [0, 1, 2]
    connection.release()


def test_a_message_not_in_kombus_shape_ends_the_fetch_and_stays_in_the_queue(redis_server, redis_client):
    with Connection(redis_server.url, transport=TRANSPORT, transport_options={"fetch_max": 8}) as connection:
        queue = connection.SimpleQueue("fetch.odd")
        queue.put({"n": 0})
        queue.put({"n": 1})
        redis_client.lpush("fetch.odd", json.dumps({"not": "kombu"}))
        queue.put({"n": 2})
        assert queue.get(timeout=10).payload == {"n": 0}
        # n=1 was fetched with it; the odd one was pushed back where it was, and n=2 stays behind it.
        assert redis_client.hlen(queue.channel.qos.unacked_key) == 2
        assert [json.loads(m).get("not") for m in redis_client.lrange("fetch.odd", 0, -1)] == [None, "kombu"]
        queue.close()


def test_a_worker_takes_a_backlog_a_batch_per_round_trip_and_acknowledges_it(
        redis_server, redis_client, tiny_multilabel_model, tmp_path):
    """End to end: with 20 jobs waiting, the worker's first fetch brings 16 (BATCH_MAX_TEXTS) and the batch
    starts once the group is in, not with its first message alone; every message is acknowledged."""
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", DEFAULT_MODEL="tiny",
                   BATCH_MAX_TEXTS="16", BATCH_MAX_WAIT_MS="50", CACHE_TTL="0")
    api = start_api(env, tmp_path / "api.log")
    try:
        job_ids = []
        for n in range(20):
            response = requests.post(api.url + "/generate", json={"input_text": f"backlog text {n}"}, timeout=10)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])
        worker = start_worker(env, tmp_path / "worker.log", models=["tiny"])
        try:
            for job_id in job_ids:
                assert wait_for_job(api.url, job_id, timeout=60)["status"] == "succeeded"
            samples = scrape.worker_samples(f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics")
            passes = scrape.metric(samples, names.BATCH_SIZE + "_count", "tiny")
            small = scrape.metric(samples, names.BATCH_SIZE + "_bucket", "tiny", le="8.0")
            # 16 then 4 (kombu alone: the first message alone at once, then the rest as they came).
            assert (passes, small) == (2, 1), (passes, small)
            wait_until(lambda: redis_client.hlen("unacked") == 0, timeout=10, what="every message acknowledged")
        finally:
            worker.stop()
    finally:
        api.stop()
