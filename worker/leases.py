"""The jobs this worker process is running, and the thread that keeps their leases alive.

A claim (shared/job_scripts.py CLAIM) gives each job a lease of LEASE_SECONDS under the claim's token.
LeaseKeeper renews the leases of every job held here every LEASE_SECONDS / 3, on a thread of its own
started with the worker process (worker/bootsteps.py LeaseStep): it keeps going while Celery's consumer
reconnects to the broker, so a batch still running never outlives its lease, and no other worker runs
its jobs beside it. A worker that stops renewing (killed, or stalled past its lease) loses its jobs to
the next claim; its late finish is then refused (fencing), so only one result is ever stored.
"""

from __future__ import annotations

import logging
import threading

from shared.jobs import LEASE_SECONDS, JobStore
from shared.redis_client import STORE_ERRORS
from worker.background import BackgroundThread

log = logging.getLogger(__name__)


class HeldJobs:
    """Jobs this process is running now, with their claim tokens. A second copy of one (a redelivery after a
    broker reconnect, with WORKER_CONCURRENCY > 1) waits instead of running beside it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._tokens: dict[str, str] = {}

    def take(self, job_ids: list[str]) -> set[str]:
        """Mark the free ones active; returns those another batch of this process is running."""
        with self._lock:
            busy = self._ids.intersection(job_ids)
            self._ids.update(set(job_ids) - busy)
            return busy

    def hold(self, job_id: str, token: str) -> None:
        """A job claimed under `token`: its lease is renewed from now on."""
        with self._lock:
            if job_id in self._ids:
                self._tokens[job_id] = token

    def leases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._tokens)

    def release(self, job_ids) -> None:
        with self._lock:
            self._ids.difference_update(job_ids)
            for job_id in job_ids:
                self._tokens.pop(job_id, None)


IN_FLIGHT = HeldJobs()


class LeaseKeeper(BackgroundThread):
    """Renews the leases of the jobs in IN_FLIGHT until stopped."""

    def __init__(self, store: JobStore, owner: str, held: HeldJobs = IN_FLIGHT):
        super().__init__("leases")
        self.store, self.owner, self.held = store, owner, held

    def _run(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                lost = self.store.renew(self.owner, self.held.leases())
            except STORE_ERRORS as exc:  # the store gate holds the batch; the next round tries again
                log.warning("could not renew job leases: %s", exc)
                continue
            if lost:
                log.warning("lost the lease of %d job(s) (taken over after this worker stalled): %s; their "
                            "results will not be stored by this worker", len(lost), ", ".join(lost[:5]))
