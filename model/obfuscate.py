"""Seeded spelling obfuscation for training: leetspeak, deleted, swapped or inserted characters, spaces.

People write around filters ("1d10t", "k1ll", "m u s l i m s", "stupdi"), and ordinary posts are full of
typos. Obfuscated copies of harmful AND harmless training texts alike teach the model that spelling
alone says nothing about harm: the copy keeps the original's labels. Written here rather than taken from
a library because the needed part is a few lines and must be deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import random
import re

LEET = {"a": "4@", "e": "3", "i": "1!", "o": "0", "s": "5$", "t": "7", "l": "1", "g": "9", "b": "8"}
_WORD = re.compile(r"[A-Za-z]{3,}")
WORD_SHARE = 0.35  # each word of 3+ letters is obfuscated with this probability (at least one word is)
AUGMENTED_SHARE = 0.15  # share of training examples that get one obfuscated copy


def leetspeak(word: str, rng: random.Random) -> str:
    chars = [rng.choice(LEET[c.lower()]) if c.lower() in LEET and rng.random() < 0.6 else c for c in word]
    if chars == list(word):  # make sure something changed where it can
        spots = [i for i, c in enumerate(word) if c.lower() in LEET]
        if spots:
            i = rng.choice(spots)
            chars[i] = rng.choice(LEET[word[i].lower()])
    return "".join(chars)


def delete_char(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word))  # keep the first letter, as typos mostly do
    return word[:i] + word[i + 1:]


def swap_chars(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def insert_char(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word))
    return word[:i] + rng.choice([word[i - 1], word[i], ".", "*", "-", "_"]) + word[i:]


def space_out(word: str, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return " ".join(word)
    i = rng.randrange(1, len(word))
    return word[:i] + " " + word[i:]


EDITS = (leetspeak, delete_char, swap_chars, insert_char, space_out)


def obfuscate(text: str, rng: random.Random) -> str:
    """The text with some of its words respelled by one random edit each (text unchanged if no word of 3+
    letters)."""
    words = list(_WORD.finditer(text))
    if not words:
        return text
    chosen = {i for i in range(len(words)) if rng.random() < WORD_SHARE} or {rng.randrange(len(words))}
    pieces, last = [], 0
    for i, match in enumerate(words):
        if i in chosen:
            pieces += [text[last:match.start()], rng.choice(EDITS)(match.group(), rng)]
            last = match.end()
    return "".join(pieces) + text[last:]


def augment(examples: list, seed: int, share: float = AUGMENTED_SHARE) -> list:
    """The examples plus an obfuscated copy (same labels, source and bucket) of a seeded share of them,
    harmful or not."""
    rng = random.Random(seed)
    copies = []
    for example in examples:
        if rng.random() < share:
            text = obfuscate(example.text, rng)
            if text != example.text:
                copies.append(dataclasses.replace(example, text=text))
    return examples + copies
