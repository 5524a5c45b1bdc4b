"""worker/windows.py: which token spans of a long text the model reads."""

from __future__ import annotations

import random

import pytest

from worker.windows import plan_windows, sentence_spans, sentence_starts


def test_a_text_within_the_window_is_read_once_whole():
    assert plan_windows(0, 62) == [(0, 0)]
    assert plan_windows(62, 62, [10, 30]) == [(0, 62)]


@pytest.mark.parametrize("seed", range(5))
def test_every_token_is_read_and_no_window_is_longer_than_the_model(seed):
    rng = random.Random(seed)
    length = rng.randint(63, 2000)
    starts = sorted(rng.sample(range(1, length), rng.randint(0, length // 10)))
    spans = plan_windows(length, 62, starts)
    assert len(spans) == len(set(spans))
    assert all(0 <= start < end <= length and end - start <= 62 for start, end in spans)
    assert set().union(*(range(start, end) for start, end in spans)) == set(range(length))
    # Every stretch of half a window lies wholly inside one window.
    for first in range(0, length - 31):
        assert any(start <= first and first + 31 <= end for start, end in spans), first
    # The cost grows with the length: about three tokens read per token.
    assert sum(end - start for start, end in spans) <= 4 * length


def test_every_sentence_of_a_long_text_is_also_read_alone():
    spans = plan_windows(100, 62, [40, 70, 72])
    assert (40, 70) in spans  # a sentence alone
    assert (70, 100) in spans  # a 2-token sentence is read with the next one
    assert sentence_spans([40, 70, 72], 100) == [(0, 40), (40, 70), (70, 100)]


def test_sentence_starts_follow_end_punctuation_and_line_breaks():
    text = "Nice day. We went out!\nThen home"
    words = [(0, 4), (5, 8), (8, 9), (10, 12), (13, 17), (18, 21), (21, 22), (23, 27), (28, 32)]
    assert [text[s:e] for s, e in words] == ["Nice", "day", ".", "We", "went", "out", "!", "Then", "home"]
    assert sentence_starts(text, words) == [3, 7]


def test_a_text_a_little_longer_than_a_window_costs_a_short_second_window():
    assert plan_windows(70, 62) == [(0, 62), (31, 70)]
    assert plan_windows(124, 62) == [(0, 62), (31, 93), (62, 124)]
