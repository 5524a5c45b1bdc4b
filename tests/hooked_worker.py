"""`python -m tests.hooked_worker HOOK [worker args]`: `python -m worker` with one test-only fault in it.

The service has no test switches: a test that needs a worker to die at a chosen point starts this
launcher instead of `python -m worker`; it installs the hook, then runs the worker's own main().
Hooks:
- crash-model: the `crash-bert` model type loads (tests/crash_model.py); its forward pass SIGKILLs the
  process on its marker word.
- die-after-storing: SIGKILL the process right after a batch's results are stored, before anything
  after them (the texts/s counters, enqueueing webhooks) runs.
- first-batch-waits: the first batch waits (its requests in hand) until the test sets RELEASE_KEY in the
  job store, so that what arrives meanwhile forms one backlog: with WORKER_CONCURRENCY=1 it is the next batch.
- lose-a-finish-reply: the first batch's results are stored, then its call raises as if the store's reply
  was lost (what a store that froze mid-call does: it runs the script when it thaws, after the worker gave up).
- slow-model: every forward pass also sleeps SLOW_MODEL_SECONDS (default 0.25; a sleep, so no CPU is used),
  as a larger model would take: a few hundred jobs stay in flight for seconds (tests/cluster/).
"""

from __future__ import annotations

import os
import signal
import sys


def _crash_model() -> None:
    from tests.crash_model import register

    register()


def _die_after_storing() -> None:
    from worker import pipeline

    def die(*args, **kwargs):
        print("die-after-storing: results stored; SIGKILL before webhooks are enqueued", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    pipeline.after_batch = die


def _lose_a_finish_reply() -> None:
    import redis

    from shared.jobs import JobStore

    finish_many, lost = JobStore.finish_many, []

    def finish_and_lose_the_reply(self, outcomes, finisher="", tokens=None):
        stored = finish_many(self, outcomes, finisher, tokens)
        if not lost:
            lost.append(outcomes)
            print(f"lose-a-finish-reply: {len(outcomes)} results stored; the reply is lost", flush=True)
            raise redis.ConnectionError("the store's reply was lost (tests/hooked_worker.py)")
        return stored

    JobStore.finish_many = finish_and_lose_the_reply


RELEASE_KEY = "test:hooked-worker:release"


def _first_batch_waits() -> None:
    import time

    from worker import tasks

    process_batch, waited = tasks.process_batch, []

    def wait_then_process(runtime, requests):
        if not waited:
            waited.append(True)
            print(f"first-batch-waits: holding a batch of {len(requests)}", flush=True)
            while not runtime.store.redis.exists(RELEASE_KEY):
                time.sleep(0.05)
        return process_batch(runtime, requests)

    tasks.process_batch = wait_then_process


def _slow_model() -> None:
    import time

    from worker.inference import TextClassifier

    window_scores, seconds = TextClassifier.window_scores, float(os.environ.get("SLOW_MODEL_SECONDS") or 0.25)

    def slow_window_scores(self, *args, **kwargs):
        time.sleep(seconds)
        return window_scores(self, *args, **kwargs)

    TextClassifier.window_scores = slow_window_scores


HOOKS = {"crash-model": _crash_model, "die-after-storing": _die_after_storing,
         "lose-a-finish-reply": _lose_a_finish_reply, "first-batch-waits": _first_batch_waits,
         "slow-model": _slow_model}


def command(hook: str) -> list[str]:
    assert hook in HOOKS, hook
    return [sys.executable, "-m", "tests.hooked_worker", hook]


if __name__ == "__main__":
    HOOKS[sys.argv[1]]()
    from worker.__main__ import main

    sys.exit(main(sys.argv[2:]))
