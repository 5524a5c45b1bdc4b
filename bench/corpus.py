"""The benchmark corpus: short texts (tweets) read from a CSV file that stays outside the repo."""

from __future__ import annotations

import csv
from pathlib import Path

from shared.config import PROJECT_ROOT

DEFAULT_DATASET = PROJECT_ROOT.parent / "shared" / "datasets" / "davidson-2017" / "labeled_data.csv"


def load_texts(path: Path, count: int, column: str = "tweet") -> list[str]:
    """The first `count` distinct non-empty texts, in file order (distinct: the result cache must not help)."""
    texts: dict[str, None] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = (row.get(column) or "").strip()
            if text:
                texts[text] = None
            if len(texts) >= count:
                break
    if len(texts) < count:
        raise SystemExit(f"{path} holds only {len(texts)} distinct texts in column {column!r}; need {count}")
    return list(texts)
