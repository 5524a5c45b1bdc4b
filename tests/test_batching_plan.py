"""worker/batching.py: which texts share a forward pass."""

from __future__ import annotations

import random

import pytest

from worker.batching import plan_forward_passes


def padded_tokens(group: list[int], lengths: list[int]) -> int:
    return max(lengths[i] for i in group) * len(group)


def test_no_texts_no_passes():
    assert plan_forward_passes([], 8, 100) == []


@pytest.mark.parametrize("seed", range(5))
def test_every_text_once_within_both_limits_and_sorted_by_length(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(3, 64) for _ in range(rng.randint(1, 300))]
    passes = plan_forward_passes(lengths, max_texts=16, max_tokens=400)
    assert sorted(i for group in passes for i in group) == list(range(len(lengths)))
    for group in passes:
        assert 1 <= len(group) <= 16
        assert padded_tokens(group, lengths) <= 400
    flat = [lengths[i] for group in passes for i in group]
    assert flat == sorted(flat)  # length-sorted, so short texts are not padded to long ones


def test_text_count_limit_splits_a_large_job():
    passes = plan_forward_passes([10] * 300, max_texts=32, max_tokens=10**6)
    assert [len(group) for group in passes] == [32] * 9 + [12]


def test_token_limit_cuts_before_the_group_would_exceed_it():
    # 4 texts of 30 tokens pad to 120 > 100, so passes hold 3.
    assert [len(group) for group in plan_forward_passes([30] * 7, max_texts=10, max_tokens=100)] == [3, 3, 1]


def test_a_text_longer_than_the_token_budget_runs_alone():
    lengths = [5, 5, 500, 5]
    passes = plan_forward_passes(lengths, max_texts=8, max_tokens=64)
    assert [2] in passes
    assert sorted(i for group in passes for i in group) == [0, 1, 2, 3]


def test_short_texts_are_not_padded_to_a_long_one():
    lengths = [60, 4, 4, 4, 60, 4]
    passes = plan_forward_passes(lengths, max_texts=4, max_tokens=10**6)
    assert [sorted(lengths[i] for i in group) for group in passes] == [[4, 4, 4, 4], [60, 60]]
