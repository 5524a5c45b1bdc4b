"""`python -m tests.hooked_worker HOOK [worker args]`: `python -m worker` with one test-only fault in it.

The service has no test switches: a test that needs a worker to die at a chosen point starts this
launcher instead of `python -m worker`; it installs the hook, then runs the worker's own main().
Hooks:
- crash-model: the `crash-bert` model type loads (tests/crash_model.py); its forward pass SIGKILLs the
  process on its marker word.
- die-after-storing: SIGKILL the process right after a batch's results are stored, before anything
  after them (the texts/s counters, enqueueing webhooks) runs.
- lose-a-finish-reply: the first batch's results are stored, then its call raises as if the store's reply
  was lost (what a store that froze mid-call does: it runs the script when it thaws, after the worker gave up).
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

    def finish_and_lose_the_reply(self, outcomes, finisher=""):
        stored = finish_many(self, outcomes, finisher)
        if not lost:
            lost.append(outcomes)
            print(f"lose-a-finish-reply: {len(outcomes)} results stored; the reply is lost", flush=True)
            raise redis.ConnectionError("the store's reply was lost (tests/hooked_worker.py)")
        return stored

    JobStore.finish_many = finish_and_lose_the_reply


HOOKS = {"crash-model": _crash_model, "die-after-storing": _die_after_storing,
         "lose-a-finish-reply": _lose_a_finish_reply}


def command(hook: str) -> list[str]:
    assert hook in HOOKS, hook
    return [sys.executable, "-m", "tests.hooked_worker", hook]


if __name__ == "__main__":
    HOOKS[sys.argv[1]]()
    from worker.__main__ import main

    sys.exit(main(sys.argv[2:]))
