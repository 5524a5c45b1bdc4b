"""The functional suite's halves and its near-duplicates in the training data.

The suite (model/functional_suite.tsv) is split by template into a frozen test half, never used to
choose data, thresholds or training, and a development half. A template is a case with its identity
terms masked, so "women are vermin" and "muslims are vermin" share a template, and a half.
Near-duplicates are found by edit distance between templates, over words: an exact-match check misses
a training sentence that differs from a suite case by one swapped phrase.
"""

from __future__ import annotations

import hashlib
from difflib import SequenceMatcher

from model.data import FUNCTIONAL_SUITE_PATH, dedup_key, read_tsv

# Identity terms (singular and plural forms are listed where they differ): the words a template masks.
IDENTITY_TERMS = frozenset("""
women woman girls girl men man boys boy female females male males trans transgender nonbinary
gay gays lesbian lesbians bisexual queer lgbt lgbtq homosexual homosexuals
black blacks white whites asian asians african africans latino latinos latina latinas hispanic hispanics
mexican mexicans chinese japanese korean koreans indian indians arab arabs native natives
jew jews jewish muslim muslims islam islamic christian christians catholic catholics hindu hindus sikh sikhs
immigrant immigrants migrant migrants refugee refugees foreigner foreigners
disabled disability autistic deaf blind wheelchair
martian martians alien aliens
""".split())
NEAR_DUPLICATE_RATIO = 0.75  # word-level similarity of templates at or above which two texts are near-duplicates
TEST_SHARE = 0.5


def template(text: str) -> str:
    """Lower-case words with identity terms masked as <id>."""
    return " ".join("<id>" if word in IDENTITY_TERMS else word for word in dedup_key(text).split())


def suite_half(text: str) -> str:
    """'test' (frozen) or 'dev', by a hash of the case's template: variants of one template share a half."""
    digest = hashlib.sha256(template(text).encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_SHARE else "dev"


def similarity(a: str, b: str) -> float:
    """Word-level edit similarity (difflib ratio) of two templates, 0..1."""
    return SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def near_duplicates(texts: list[str], corpus: list[str], ratio: float = NEAR_DUPLICATE_RATIO) -> dict[str, str]:
    """For each text with a near-duplicate in corpus (by template), that corpus text."""
    corpus_templates = {}
    for text in corpus:
        corpus_templates.setdefault(template(text), text)
    by_length: dict[int, list[str]] = {}
    for key in corpus_templates:
        by_length.setdefault(len(key.split()), []).append(key)
    found = {}
    for text in texts:
        key = template(text)
        words = len(key.split())
        if key in corpus_templates:
            found[text] = corpus_templates[key]
            continue
        # Two word lists of lengths m, n have ratio <= 2 min / (m + n): skip lengths that cannot reach it.
        for length, keys in by_length.items():
            if 2 * min(length, words) / max(1, length + words) < ratio:
                continue
            match = next((other for other in keys if similarity(key, other) >= ratio), None)
            if match is not None:
                found[text] = corpus_templates[match]
                break
    return found


def identity_masked(text: str) -> bool:
    return "<id>" in template(text)



def frozen_test_cases(path: str = FUNCTIONAL_SUITE_PATH) -> list[str]:
    """The texts of the suite's frozen test half."""
    return [row["text"] for row in read_tsv(path) if suite_half(row["text"]) == "test"]
