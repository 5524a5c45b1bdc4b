"""The in-process engine sweep: texts/s of each engine x precision at several batch sizes.

    python -m bench.engines [--texts 1000] [--batch-sizes 1,16,32,64] [--threads N]

Same model, same texts, the worker's own code path (TextClassifier.score_many: tokenise once,
length-sorted passes of `batch` texts). engine_sweep() is what `make bench` reports.
"""

from __future__ import annotations

import argparse
import gc

from bench.inprocess import batched_rate_and_cpu
from worker.inference import TextClassifier

# (label, engine, quantize), in the order the table shows them.
ENGINE_VARIANTS = (
    ("torch fp32", "torch", "none"),
    ("torch dynamic int8", "torch", "int8"),
    ("onnx fp32", "onnx", "none"),
    ("onnx dynamic int8", "onnx", "int8"),
)


def engine_sweep(model_path: str, texts: list[str], batch_sizes: list[int], threads: int = 0,
                 cache_dir: str = "", variants=ENGINE_VARIANTS) -> list[dict]:
    """One row per variant: {"variant", "engine", "precision", "load_seconds", "rates": {batch: texts/s},
    "cpu_ms": {batch: CPU ms per text}}. `engine` is what actually ran (export failure: torch).
    CPU ms per text hardly depends on what else the machine runs; texts/s does."""
    rows = []
    for label, engine, quantize in variants:
        classifier = TextClassifier(model_path, "cpu", quantize, threads, engine, cache_dir)
        measured = {size: batched_rate_and_cpu(classifier, texts, size) for size in batch_sizes}
        rows.append({"variant": label, "engine": classifier.engine, "precision": classifier.precision,
                     "load_seconds": classifier.load_seconds,
                     "rates": {size: rate for size, (rate, _) in measured.items()},
                     "cpu_ms": {size: cpu * 1000 for size, (_, cpu) in measured.items()}})
        del classifier
        gc.collect()
    return rows


def sweep_table(rows: list[dict], batch_sizes: list[int], key: str = "rates", digits: int = 0) -> str:
    """A markdown table of rows[key] ("rates": texts/s, "cpu_ms": CPU ms per text) by batch size."""
    lines = ["| engine | " + " | ".join(f"batch {size}" for size in batch_sizes) + " |",
             "|---|" + "---:|" * len(batch_sizes)]
    for row in rows:
        ran = "" if row["variant"].startswith(row["engine"]) else f" (ran {row['engine']})"
        lines.append(f"| {row['variant']}{ran} | " + " | ".join(f"{row[key][size]:.{digits}f}" for size in batch_sizes)
                     + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from bench.corpus import CORPUS_FILE, load_texts
    from shared.config import BUNDLED_MODEL_PATH

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL_PATH))
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--batch-sizes", default="1,16,32,64")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the CPU quota)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    texts = load_texts(CORPUS_FILE, args.texts)
    rows = engine_sweep(args.model, texts, sizes, args.threads)
    print(f"texts/s in process, {len(texts)} texts, {args.model}")
    print(sweep_table(rows, sizes))
    print("\nCPU ms per text (all threads)")
    print(sweep_table(rows, sizes, "cpu_ms", 2))


if __name__ == "__main__":
    main()
