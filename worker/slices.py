"""Fair service: which jobs of a batch run whole, which advance by one slice, and scoring a slice.

No job may hold a worker for longer than one slice: a batch reads at most SLICE_TOKENS tokens (the
tokens the model reads: every window of every text, special tokens included). The batch's jobs that
fit run whole, oldest first, one job per caller (API key) in turn; then one job too large to fit reads
the budget left (at least a quarter of it, so bulk work advances under a steady stream of small jobs)
from where its last slice stopped, and goes back to the back of its queue (shared/jobs.py requeue)
with its place (`cursor`: text, window) and the scores so far (each label's highest window score,
which can be taken in any order). Other jobs that do not fit go back to the queue untouched. So a
one-text job waits at most about one slice behind bulk work, however large, and bulk jobs take turns.

Costs are estimated from the API's token counts (api/tokens.py) before anything is tokenised here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from worker.inference import TextClassifier

# A long text is read about three times over (worker/windows.py: windows overlapping by half, then
# sentence by sentence); a text within one window once, with its two special tokens.
READS_PER_LONG_TOKEN = 3
SPECIAL_TOKENS = 2


def batch_token_bound(slice_tokens: int) -> float:
    """The most tokens one batch reads (plan_turn): small jobs up to the budget, then at most one slice
    of a quarter of it, and at most one job that ran before a worker died. The chart derives the workers'
    termination grace period from it (deploy/helm/moderation/templates/_helpers.tpl)."""
    return 1.25 * slice_tokens


def read_cost(tokens: int, window: int) -> int:
    """Tokens the model reads for a text of `tokens` content tokens, read `window` at a time."""
    return tokens + SPECIAL_TOKENS if tokens <= window else READS_PER_LONG_TOKEN * tokens


def parse_cursor(cursor: str) -> tuple[int, int]:
    """"text:window" where the next slice starts; "" is the start."""
    text, _, window = cursor.partition(":")
    return (int(text), int(window or 0)) if text else (0, 0)


def remaining_cost(text_tokens: list[int] | None, texts: list[str], cursor: str, window: int) -> int:
    """Estimated tokens still to read; without the API's counts (an older API), one token per character."""
    start, _ = parse_cursor(cursor)
    counts = text_tokens if text_tokens is not None and len(text_tokens) == len(texts) else [len(t) for t in texts]
    return sum(read_cost(n, window) for n in counts[start:])


@dataclass
class Turn:
    """What a batch does with its jobs (each job: anything with .owner, .waited_since and .cost)."""
    whole: list = field(default_factory=list)
    sliced: list = field(default_factory=list)  # (job, token budget)
    postponed: list = field(default_factory=list)


def _by_caller_in_turn(jobs: list) -> list:
    """Oldest first, but one job per caller in turn: a caller's tenth job comes after everyone's first."""
    rank: dict[str, int] = defaultdict(int)
    keyed = []
    for job in sorted(jobs, key=lambda j: j.waited_since):
        keyed.append((rank[job.owner], job.waited_since, len(keyed), job))
        rank[job.owner] += 1
    return [job for *_, job in sorted(keyed, key=lambda row: row[:3])]


def plan_turn(jobs: list, budget: int) -> Turn:
    """Split a batch's jobs into whole runs, at most one slice and the rest put back (module docstring)."""
    turn, left = Turn(), budget
    small = [job for job in jobs if job.cost <= budget]
    large = [job for job in jobs if job.cost > budget]
    for job in _by_caller_in_turn(small):
        if job.cost <= left or not turn.whole:
            turn.whole.append(job)
            left -= job.cost
        else:
            turn.postponed.append(job)
    for job in _by_caller_in_turn(large):
        if not turn.sliced:
            turn.sliced.append((job, max(left, budget // 4, 1)))
        else:
            turn.postponed.append(job)
    return turn


@dataclass
class SliceResult:
    cursor: str  # where the next slice starts ("" once done)
    scores: list  # per text started so far: each label's highest window score
    done: bool
    read_tokens: int


def score_slice(classifier: TextClassifier, texts: list[str], text_tokens: list[int] | None, cursor: str,
                partial: list | None, budget: int, max_texts: int, max_tokens: int, on_pass=None) -> SliceResult:
    """Read the windows from `cursor` on until `budget` tokens (at least one window), fold their scores
    into `partial`. Texts are tokenised only as far as the slice reaches."""
    start_text, start_window = parse_cursor(cursor)
    scores: list = list(partial or [])
    counts = text_tokens if text_tokens is not None and len(text_tokens) == len(texts) else [len(t) for t in texts]
    taken: dict[str, list[list[int]]] = {}
    owners: list[tuple[int, int]] = []  # (text, window in text) per taken window
    used, index, stop = 0, start_text, None
    while index < len(texts) and stop is None:
        # Tokenise the texts this slice can reach (by the API's counts), not the whole job.
        end, reach = index, 0
        while end < len(texts) and (end == index or reach < budget - used):
            reach += read_cost(counts[end], classifier.window_size)
            end += 1
        encoded, window_owners = classifier.encode(texts[index:end])
        seen: dict[int, int] = defaultdict(int)
        for row, owner in enumerate(window_owners):
            text, number = index + owner, seen[owner]
            seen[owner] += 1
            if text == start_text and number < start_window:
                continue
            length = len(encoded["input_ids"][row])
            if owners and used + length > budget:
                stop = (text, number)
                break
            for name, rows in encoded.items():
                if name in classifier.backend.input_names:
                    taken.setdefault(name, []).append(rows[row])
            owners.append((text, number))
            used += length
        index = end
    rows = classifier.window_scores(taken, max_texts, max_tokens, on_pass) if owners else []
    for (text, _), row in zip(owners, rows):
        while len(scores) <= text:
            scores.append(None)
        scores[text] = row if scores[text] is None else np.maximum(scores[text], row).tolist()
    if stop is None:
        return SliceResult("", scores, True, used)
    return SliceResult(f"{stop[0]}:{stop[1]}", scores, False, used)
