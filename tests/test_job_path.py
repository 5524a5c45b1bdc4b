"""The lean job path against a real Redis: one pub/sub listener per process for every waiting request,
the finished record delivered with the done message, one script call to accept a job or claim a batch."""

from __future__ import annotations

import threading
import uuid

import pytest

from shared.completions import CompletionListener
from shared.jobs import (
    DELIVERIES_PREFIX,
    FAILED,
    LEASE_PREFIX,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    JobStore,
    job_key,
    pending_key,
)
from shared.queues import broker_lists
from tests.support import wait_until

QUEUE = "moderation.jobpath"


@pytest.fixture
def store(redis_client):
    return JobStore(redis_client, 60)


def new_record(store: JobStore) -> JobRecord:
    record = JobRecord(job_id=str(uuid.uuid4()), model="m", queue=QUEUE, texts=["hello"])
    store.create(record)
    return record


def pubsub_clients(client) -> int:
    return sum(1 for c in client.client_list() if int(c.get("psub", 0)) or int(c.get("sub", 0)))


def test_one_listener_connection_wakes_every_waiter_with_its_own_record(store, redis_client):
    listener = CompletionListener(redis_client)
    records = [new_record(store) for _ in range(20)]
    watches = [listener.watching(r.job_id) for r in records]
    waiters = [w.__enter__() for w in watches]
    wait_until(lambda: listener._subscribed_at is not None, timeout=10, what="the listener to subscribe")
    got: dict[str, JobRecord | None] = {}
    threads = [threading.Thread(target=lambda w=w: got.__setitem__(w.job_id, store.wait_watched(w, 20, listener)))
               for w in waiters]
    for thread in threads:
        thread.start()
    assert pubsub_clients(redis_client) == 1  # not one subscription per waiting request
    store.finish_many([(r.job_id, [{"flagged": i % 2 == 0}], None) for i, r in enumerate(records)])
    for thread in threads:
        thread.join(30)
    for watch in watches:
        watch.__exit__(None, None, None)
    for i, record in enumerate(records):
        assert got[record.job_id].status == SUCCEEDED
        assert got[record.job_id].results == [{"flagged": i % 2 == 0}]
        # The record came with the done message: a fresh read says the same.
        assert store.get(record.job_id).results == got[record.job_id].results
    assert listener._waiters == {}


def test_the_published_message_is_the_finished_record(store, redis_client):
    record = new_record(store)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"moderation:job:{record.job_id}:done")
    wait_until(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, timeout=5, what="subscribe")
    store.finish_many([(record.job_id, None, "inference failed: boom")])
    message = wait_until(lambda: pubsub.get_message(timeout=1.0), timeout=10, what="the done message")
    pubsub.close()
    from shared.jobs import _record_from_message
    published = _record_from_message(record.job_id, message["data"])
    assert published.status == FAILED and published.error == "inference failed: boom"
    assert published.created_at == record.created_at and published.texts is None


def test_a_waiter_registered_while_the_listener_is_down_still_sees_the_result(store, redis_client):
    """No subscription (Redis unreachable for the listener): waiters re-read their record each second."""
    record = new_record(store)

    class Unsubscribed(CompletionListener):
        def _ensure_running(self):  # the listener thread never subscribes
            pass

    listener = Unsubscribed(redis_client)
    threading.Timer(0.3, store.finish_many, [[(record.job_id, [{"flagged": True}], None)]]).start()
    finished = store.wait_until_finished(record.job_id, 10, listener)
    assert finished.status == SUCCEEDED and finished.results == [{"flagged": True}]


def test_accepting_below_the_depth_limit_writes_the_record_and_above_it_writes_nothing(store, redis_client):
    lists = broker_lists(QUEUE)
    redis_client.delete(*lists)
    accepted = JobRecord(job_id=str(uuid.uuid4()), model="m", queue=QUEUE, texts=["a", "b"])
    assert store.create_unless_full(accepted, lists, max_depth=2) == 0
    assert store.get(accepted.job_id).texts == ["a", "b"] and store.get(accepted.job_id).status == QUEUED
    assert 0 < redis_client.ttl(job_key(accepted.job_id)) <= 60
    assert redis_client.zscore(pending_key(QUEUE), accepted.job_id) == pytest.approx(accepted.enqueued_ts)
    redis_client.lpush(lists[0], "m1", "m2")
    refused = JobRecord(job_id=str(uuid.uuid4()), model="m", queue=QUEUE, texts=["c"])
    assert store.create_unless_full(refused, lists, max_depth=2) == 2
    assert store.get(refused.job_id) is None and redis_client.zscore(pending_key(QUEUE), refused.job_id) is None
    redis_client.delete(*lists)


def test_claiming_a_batch_marks_unfinished_jobs_running_and_reports_what_they_were(store):
    queued, finished = new_record(store), new_record(store)
    store.finish_many([(finished.job_id, [], None)])
    missing = str(uuid.uuid4())
    states = store.claim([queued.job_id, finished.job_id, missing], "worker-a")
    assert [claim.status for claim in states] == [QUEUED, SUCCEEDED, None]
    assert [claim.verdict for claim in states] == ["run", "skip", "skip"]
    assert float(states[0][1]) == pytest.approx(queued.enqueued_ts)
    assert store.get(queued.job_id).status == RUNNING and store.get(queued.job_id).started_at
    assert store.get(finished.job_id).status == SUCCEEDED and store.get(missing) is None
    assert store.claim([]) == []


def test_a_job_under_a_live_lease_is_held_and_taken_over_only_when_the_lease_expires(store, redis_client):
    """One run per job: worker b does not run a job worker a holds; once a's lease expires (a died after
    handing the job to the model), b takes it over and one death is counted, once."""
    job = new_record(store)
    [claim] = store.claim([job.job_id], "worker-a")
    assert (claim.verdict, claim.deaths) == ("run", 0)
    # As worker/deliveries.py's record() does just before the texts go to the model.
    redis_client.hset(DELIVERIES_PREFIX + job.job_id, mapping={"attempt": "worker-a", "worker": "worker-a"})
    assert store.claim([job.job_id], "worker-b")[0].verdict == "held"
    assert store.claim([job.job_id], "worker-a")[0][:4] == ("running", claim.enqueued_ts, "run", 0)  # its own batch
    redis_client.delete(LEASE_PREFIX + "worker-a")  # a stopped renewing: its lease expired
    assert store.claim([job.job_id], "worker-b")[0][2:4] == ("run", 1)
    redis_client.delete(LEASE_PREFIX + "worker-b")  # b died before handing it to the model: no death
    assert store.claim([job.job_id], "worker-c")[0][2:4] == ("run", 1)
    assert redis_client.ttl(LEASE_PREFIX + "worker-c") > 0 and redis_client.ttl(DELIVERIES_PREFIX + job.job_id) > 0
