"""Throughput on long texts: the worker reads every part of a text in windows (worker/windows.py).

    python -m bench.long_texts [--model DIR] [--threads N]     # `make bench` runs it after bench.run

Posts of 1, 4 and 16 corpus tweets joined (about 25, 100 and 400 tokens), scored in process the way the
worker scores them (TextClassifier.score_many, BATCH_MAX_TEXTS=32, the device's token budget), once
reading every window and once reading only the first window (what the worker did before windows).
Prints a markdown table: windows per text, texts/s, tokens/s and CPU ms per text.
"""

from __future__ import annotations

import argparse
import time

from bench.corpus import CORPUS_FILE, load_texts
from bench.inprocess import load_classifier

POST_SIZES = ((1, 600), (4, 200), (16, 60))  # (tweets per post, posts)


def posts(tweets: list[str], size: int, count: int) -> list[str]:
    return [" ".join(tweets[(i * size + j) % len(tweets)] for j in range(size)) for i in range(count)]


def measure(classifier, texts: list[str], batch_texts: int = 32) -> dict:
    classifier.score_many(texts[:batch_texts], batch_texts, classifier.token_budget)  # warm-up
    windows = sum(classifier.windows_per_text(texts))
    tokens = sum(len(ids) for ids in classifier.tokenizer(texts, verbose=False)["input_ids"])
    started, cpu_started = time.perf_counter(), time.process_time()
    classifier.score_many(texts, batch_texts, classifier.token_budget)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"windows_per_text": windows / len(texts), "tokens_per_text": tokens / len(texts),
            "texts_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds, "cpu_ms": 1000 * cpu / len(texts)}


def long_text_rows(model_path: str, threads: int = 0) -> list[dict]:
    classifier = load_classifier(model_path, "cpu", threads=threads)
    tweets = load_texts(CORPUS_FILE, 3000)
    rows = []
    for size, count in POST_SIZES:
        texts = posts(tweets, size, count)
        every = classifier.max_text_tokens
        for mode, limit in (("every window", every), ("first window only", classifier.window_size)):
            classifier.max_text_tokens = limit
            rows.append({"tweets": size, "texts": count, "mode": mode, **measure(classifier, texts)})
        classifier.max_text_tokens = every
    return rows, classifier.describe()


def table(rows: list[dict]) -> str:
    lines = ["| post | read | tokens / text | windows / text | texts/s | tokens/s | CPU ms / text |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['tweets']} tweets ({r['texts']} posts) | {r['mode']} | {r['tokens_per_text']:.0f} | "
              f"{r['windows_per_text']:.1f} | {r['texts_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['cpu_ms']:.1f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    from shared.config import BUNDLED_MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL_PATH))
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the CPU quota)")
    args = parser.parse_args(argv)
    rows, engine = long_text_rows(args.model, args.threads)
    print(f"\n## Long texts (in process, {engine}, BATCH_MAX_TEXTS=32)\n\n{table(rows)}")


if __name__ == "__main__":
    main()
