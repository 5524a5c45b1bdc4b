"""Celery's own event stream captured for tests and benches: `app.events.Receiver` on a thread of its own,
what `celery events`, Flower and celery-exporter run (tests/test_task_events.py, bench/task_events.py)."""

from __future__ import annotations

import threading
from collections import Counter

from tests.support import wait_until


class EventLog:
    """Every event on the broker, captured by Celery's own Receiver on a thread of its own, and fed to
    Celery's own State (what Flower and celery-exporter keep)."""

    def __init__(self, app):
        self.app, self.events, self.state = app, [], app.events.State()
        self._lock = threading.Lock()
        self._receiver = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event):
        with self._lock:
            self.events.append(event)
            self.state.event(event)

    def __enter__(self) -> EventLog:
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)

    def of(self, uuid_: str) -> list[dict]:
        with self._lock:
            return [event for event in self.events if event.get("uuid") == uuid_]

    def types(self, uuid_: str) -> list[str]:
        return [event["type"] for event in self.of(uuid_)]

    def heartbeats(self, hostname: str) -> list[dict]:
        with self._lock:
            return [event for event in self.events
                    if event["type"] == "worker-heartbeat" and event["hostname"] == hostname]

    def wait_for_heartbeat(self, hostname: str, after: float = 0.0) -> dict:
        """A heartbeat of this worker sent after `after` (local time): the receiver is consuming, and what the
        worker sent before it has been flushed (its event loop ran a timer since)."""
        return wait_until(lambda: next((event for event in self.heartbeats(hostname)
                                        if event["local_received"] > after), None), timeout=30,
                          what=f"a heartbeat of {hostname}")

    def task_event_counts(self) -> dict[str, int]:
        """How many task-* events of each type arrived (what celery-exporter counts)."""
        with self._lock:
            return dict(sorted(Counter(e["type"] for e in self.events if e["type"].startswith("task-")).items()))
