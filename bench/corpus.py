"""The benchmark corpus: 3,000 distinct tweets committed in bench/corpus/tweets.jsonl (one JSON string per
line), derived by bench/make_corpus.py from the Davidson et al. (2017) set (MIT, bench/corpus/LICENSE)."""

from __future__ import annotations

import json
from pathlib import Path

from shared.config import PROJECT_ROOT

CORPUS_FILE = PROJECT_ROOT / "bench" / "corpus" / "tweets.jsonl"


def load_texts(path: Path, count: int | None = None) -> list[str]:
    """The first `count` texts of a corpus file, all of them if None (distinct, so neither the result
    cache nor the worker's de-duplication within a batch can help)."""
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line) for line in f if line.strip()][:count]
    if count is not None and len(texts) < count:
        raise SystemExit(f"{path} holds only {len(texts)} texts; need {count} (see bench/make_corpus.py)")
    return texts
