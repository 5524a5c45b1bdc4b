"""A daemon thread a bootstep starts and stops (worker/bootsteps.py: BackgroundServiceStep): the heartbeat,
the Redis re-publisher and the RabbitMQ parking reconciler each run their loop in one."""

from __future__ import annotations

import threading


class BackgroundThread:
    """Subclasses write `_run`, a loop that ends once `self._stop` is set (wait on it between rounds)."""

    def __init__(self, name: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        raise NotImplementedError
