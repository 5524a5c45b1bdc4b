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


def expire_lease(redis_client, job_id: str) -> None:
    """As if its owner stopped renewing LEASE_SECONDS ago."""
    redis_client.hset(DELIVERIES_PREFIX + job_id, "lease_until", "1")


def test_a_job_under_a_live_lease_is_held_and_taken_over_only_when_the_lease_expires(store, redis_client):
    """One run per job: worker b does not run a job worker a holds; once a's lease on it expires (a died
    after handing the job to the model), b takes it over and one death is counted, once."""
    job = new_record(store)
    [claim] = store.claim([job.job_id], "worker-a")
    assert (claim.verdict, claim.deaths) == ("run", 0)
    # As worker/deliveries.py's record() does just before the texts go to the model.
    redis_client.hset(DELIVERIES_PREFIX + job.job_id, mapping={"attempt": "worker-a", "worker": "worker-a"})
    assert store.claim([job.job_id], "worker-b")[0].verdict == "held"
    again = store.claim([job.job_id], "worker-a")[0]
    assert again[:4] == ("running", claim.enqueued_ts, "run", 0)  # its own batch, held over an outage
    expire_lease(redis_client, job.job_id)  # a stopped renewing
    taken = store.claim([job.job_id], "worker-b")[0]
    assert taken[2:4] == ("run", 1)
    # a's late finish is refused (fenced): b holds the job now, and only b's claim stores its result.
    late = store.finish_many([(job.job_id, [{"flagged": True}], None)], "worker-a", {job.job_id: again.token})
    assert late == [False]
    assert store.get(job.job_id).status == RUNNING
    expire_lease(redis_client, job.job_id)  # b died before handing it to the model: no death
    taken = store.claim([job.job_id], "worker-c")[0]
    assert taken[2:4] == ("run", 1)
    assert redis_client.ttl(DELIVERIES_PREFIX + job.job_id) > 0
    stored = store.finish_many([(job.job_id, [{"flagged": False}], None)], "worker-c", {job.job_id: taken.token})
    assert stored == [True]
    assert store.get(job.job_id).results == [{"flagged": False}]


def test_renewal_keeps_a_lease_and_a_release_frees_it_without_a_death(store, redis_client):
    job = new_record(store)
    claim = store.claim([job.job_id], "worker-a")[0]
    redis_client.hset(DELIVERIES_PREFIX + job.job_id, "attempt", "worker-a")
    expire_lease(redis_client, job.job_id)
    assert store.renew("worker-a", {job.job_id: claim.token}) == []  # renewed: no one took it meanwhile
    assert store.claim([job.job_id], "worker-b")[0].verdict == "held"
    assert store.renew("worker-a", {job.job_id: "another claim's token"}) == [job.job_id]
    store.release("worker-a", {job.job_id: claim.token})  # its batch failed: requeued to the broker
    assert store.claim([job.job_id], "worker-b")[0][2:4] == ("run", 0)  # at once, and no death
    assert store.renew("worker-a", {job.job_id: claim.token}) == [job.job_id]


def test_every_store_step_run_twice_does_what_it_did_once(store, redis_client):
    """The worker's client sends a command again after a socket timeout, and the first may have run (a stalled store):
    a second create writes nothing, a second finish and requeue by the same claim answer as the first."""
    record = new_record(store)
    [claim] = store.claim([record.job_id], "worker-a")
    outcome = [(record.job_id, [{"flagged": True}], None)]
    assert store.finish_many(outcome, "worker-a", {record.job_id: claim.token}) == [True]
    assert store.finish_many(outcome, "worker-a", {record.job_id: claim.token}) == [True]  # its own first run
    assert store.finish_many(outcome, "worker-b", {record.job_id: "b"}) == [False]
    # A retried create after the job finished: the record is not reset to queued, no message is pushed.
    lists = broker_lists(record.queue)
    assert store.create_unless_full(record, lists, 100, (lists[0], "a second message")) == -1
    store.create(record)
    assert store.get(record.job_id).status == SUCCEEDED and redis_client.llen(lists[0]) == 0
    # A requeue after a slice, sent twice.
    sliced = new_record(store)
    [claim] = store.claim([sliced.job_id], "worker-a")
    for _ in range(2):
        assert store.requeue(sliced.job_id, sliced.queue, "worker-a", claim.token, "0:3", [[0.5]], True)
    assert redis_client.hget(job_key(sliced.job_id), "slices") == "1"
    assert not store.requeue(sliced.job_id, sliced.queue, "worker-b", "b", "0:3", [[0.5]], True)
