"""Realistic clean text, never trained on: what the served thresholds are chosen on and judged by.

Two halves with the same make-up, so that thresholds chosen on one are measured on the other:

- `dev` (thresholds): the validation split's clean texts and the development half of the written ones;
- `test` (reported): the test split's clean texts and the test half of the written ones.

Sources (each weighs the same in the pooled rate): ToxiGen's neutral statements
about groups (held out by statement: every group is in training, and after de-duplication the held-out
statements are too few to hold groups out as well); Surge's not-toxic comments;
Davidson's "neither" tweets; and model/everyday_clean.tsv, everyday posts written for this set. Toxic
Spans' news comments are not among them: none of them is known to be clean (model/data.py,
load_toxic_spans), and counting its untyped toxic comments as clean set the harassment threshold at 0.705
(0.28 without them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from model.data import MODEL_DIR, dedup_key, load_splits, read_tsv

EVERYDAY_CLEAN_PATH = os.path.join(MODEL_DIR, "everyday_clean.tsv")
# Clean buckets of model/data.py's splits that stand for ordinary traffic.
CLEAN_BUCKETS = {"surge-clean": "surge clean",
                 "davidson-neither": "davidson neither", "toxigen-neutral": "toxigen neutral"}
HALF_OF_SPLIT = {"val": "dev", "test": "test"}


@dataclass(frozen=True)
class CleanText:
    text: str
    source: str


def hashed_half(key: str) -> str:
    return "test" if hashlib.sha256(key.encode("utf-8")).digest()[0] < 128 else "dev"


def load_clean_sets(datasets_dir: str, splits=None) -> dict[str, list[CleanText]]:
    """{"dev": [...], "test": [...]} of clean texts that no training run has seen."""
    splits = splits or load_splits(datasets_dir)
    halves: dict[str, list[CleanText]] = {"dev": [], "test": []}
    for split, half in HALF_OF_SPLIT.items():
        for example in splits[split]:
            source = CLEAN_BUCKETS.get(example.bucket)
            if source is None:
                continue
            halves[half].append(CleanText(example.text, source))
    for row in read_tsv(EVERYDAY_CLEAN_PATH):
        halves[hashed_half(dedup_key(row["text"]))].append(CleanText(row["text"], "everyday (written)"))
    return halves
