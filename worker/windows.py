"""Which token spans of a long text the model reads: windows no longer than it was trained for.

A text that fits the model's length is one window, as it always was. A longer one is read twice over:

- in windows of the full length overlapping by half, the last one aligned to the end of the text, so
  every stretch of up to half a window is read whole, with context on both sides;
- sentence by sentence (a sentence longer than a window is itself cut into overlapping windows),
  because a short model trained on short posts scores a harmful sentence far lower when a harmless
  paragraph shares its window: on the bundled model, 8 words of neutral context before 11 harmful test
  sentences cut the flagged ones from 11 to 6, 24 words to 2.

Each label then takes its highest window score (worker/inference.py). The cost stays in proportion to
the length: about three tokens read per token of text.
"""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*$")
MIN_SENTENCE_TOKENS = 4  # shorter sentences ("Yes.", "lol") are read with the next one


def overlapping(start: int, end: int, size: int, step: int) -> list[tuple[int, int]]:
    """Windows of at most `size` covering [start, end), `step` apart; the last one is cut at `end` rather
    than moved back to a full `size`: it still holds every stretch of up to `size - step` tokens that starts
    in it, and a text a little longer than one window (most long tweets) costs a short second window, not
    a second full one."""
    if end - start <= size:
        return [(start, end)]
    spans = []
    for s in range(start, end, step):
        spans.append((s, min(s + size, end)))
        if s + size >= end:
            break
    return spans


def sentence_spans(starts: list[int], length: int) -> list[tuple[int, int]]:
    """[start, end) per sentence from the token indices that begin one; short ones join the next."""
    bounds = sorted({0, *(s for s in starts if 0 < s < length)}) + [length]
    spans: list[tuple[int, int]] = []
    begin = 0
    for end in bounds[1:]:
        if end - begin >= MIN_SENTENCE_TOKENS or end == length:
            spans.append((begin, end))
            begin = end
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < MIN_SENTENCE_TOKENS:  # a short tail joins the last
        spans[-2:] = [(spans[-2][0], spans[-1][1])]
    return spans


def plan_windows(length: int, size: int, sentence_starts: list[int] = ()) -> list[tuple[int, int]]:
    """Distinct [start, end) token spans to score for a text of `length` content tokens (special tokens
    not counted) read `size` tokens at a time; sentence_starts: token indices that begin a sentence."""
    size = max(1, size)
    if length <= size:
        return [(0, length)]
    step = max(1, size // 2)
    spans = overlapping(0, length, size, step)
    for start, end in sentence_spans(list(sentence_starts), length):
        spans += overlapping(start, end, size, step)
    return list(dict.fromkeys(spans))


def sentence_starts(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """Content-token indices that begin a sentence: after . ! ? (and closing quotes) or a line break.
    offsets: (start, end) characters of each content token (a fast tokenizer's offset mapping)."""
    starts = []
    for i in range(1, len(offsets)):
        previous = text[offsets[i - 1][0]:offsets[i - 1][1]]
        gap = text[offsets[i - 1][1]:offsets[i][0]]
        if "\n" in gap or SENTENCE_END.search(previous):
            starts.append(i)
    return starts
