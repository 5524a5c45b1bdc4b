"""Derive the benchmark corpus committed as bench/corpus/tweets.jsonl (run once; `make bench` only reads it).

`python -m bench.make_corpus [CSV] [--texts N]`: the first N distinct non-empty tweets of the Davidson et al.
(2017) set (MIT licence, copied to bench/corpus/LICENSE) in file order, one JSON string per line. Only
the text column is kept; distinct, because the result cache must never help a benchmark row.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from bench.corpus import CORPUS_FILE
from shared.config import PROJECT_ROOT

SOURCE = PROJECT_ROOT.parent / "shared" / "datasets" / "davidson-2017" / "labeled_data.csv"
SOURCE_COMMIT = "cb50f7e9eb855a99abc51423bf40df0e26d6fe30"  # davidson-2017/COMMIT of the set it was made from


def distinct_texts(path: Path, count: int, column: str = "tweet") -> list[str]:
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.make_corpus", description=__doc__)
    parser.add_argument("source", nargs="?", type=Path, default=SOURCE)
    parser.add_argument("--texts", type=int, default=3000)
    args = parser.parse_args()
    lines = [json.dumps(text, ensure_ascii=False) for text in distinct_texts(args.source, args.texts)]
    CORPUS_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} texts to {CORPUS_FILE} ({CORPUS_FILE.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
