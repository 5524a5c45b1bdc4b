"""Fast, accurate and cascade side by side: quality on the project's own held-out sets and CPU per text.

    python -m model.compare ../shared/datasets [--choose-band] [--band B] [--limit N]

Each model is run as the CPU worker serves it (worker/inference.py, ONNX Runtime int8; the cascade as
worker/cascade.py runs it): the fast model (build/moderation-minilm), the accurate model
(build/moderation-mpnet, `make model-accurate`) and the cascade of the two. Reported per model: ROC AUC and
recall at the served thresholds per label on the held-out test split, the share of realistic clean text
flagged (test half), the functional suite's frozen test half, any-label recall on the known-harmful
validation texts, category confusion (a test text of one category flagged under a label its source says
it is not), the share of texts the cascade hands to the accurate stage, and CPU-ms per text on realistic
traffic (the bench corpus: 1,000 tweets in batches of 32, process CPU time over both threads).

The cascade's settings come from model/accurate/artifact/cascade.json, which --choose-band writes first
(model/cascade_choice.py: the blend, its thresholds and the per-label bands, on the validation split and
the clean development half only) and `python -m model.cascade --choice` reads. A fourth row is the accurate
stage on every text (both models, blended): the cascade's ceiling. Writes the table to
model/accurate/artifact/compare.{json,md}. Never reads a public evaluation set.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench.corpus import CORPUS_FILE, load_texts
from model.accurate.build import DEFAULT_OUTPUT_DIR as ACCURATE_DIR
from model.accurate.modeling import ARTIFACT_DIR as ACCURATE_ARTIFACT_DIR
from model.build import DEFAULT_OUTPUT_DIR as FAST_DIR
from model.build import PROJECT_ROOT
from model.calibrate import validation_record
from model.cascade import build as build_cascade
from model.cascade import read_choice
from model.cascade_choice import choose
from model.clean_sets import load_clean_sets
from model.data import LABELS, load_splits, written_examples
from model.eval_report import evaluate, load_suite
from model.evaluate import engine_scores, load_engine
from model.suite import near_duplicates
from worker.cascade import CascadeClassifier

BAND_FILE = os.path.join(ACCURATE_ARTIFACT_DIR, "cascade.json")
CASCADE_DIR = os.path.join(PROJECT_ROOT, "build", "moderation-cascade")
EVERY_TEXT = 1e6  # a band no score is that far from: the accurate stage decides every window
CPU_TEXTS, CPU_BATCH = 1000, 32


def load_cascade(choice: dict, band=None, threads: int = 0):
    """The cascade folder (model/cascade.py) built from a cascade.json choice, as the worker runs it, counting the
    windows each stage scores; band overrides the chosen bands."""
    counts = {"fast": 0, "accurate": 0}

    def count(stage: str, windows: int) -> None:
        counts[stage] += windows
    folder = build_cascade(FAST_DIR, ACCURATE_DIR, choice["band"], CASCADE_DIR, choice.get("blend"),
                           choice.get("thresholds"))
    cascade = CascadeClassifier(folder, device="cpu", quantize="int8", threads=threads, engine="onnx",
                                on_windows=count, band=band)
    cascade.stage_counts = counts
    return cascade


def cpu_ms_per_text(classifier, texts: list[str]) -> float:
    started = time.process_time()
    for start in range(0, len(texts), CPU_BATCH):
        classifier.score_many(texts[start:start + CPU_BATCH], CPU_BATCH, classifier.token_budget)
    return round(1000 * (time.process_time() - started) / len(texts), 2)


def summary(name, classifier, result, val, val_scores, cpu_ms, accurate_share=None) -> dict:
    thresholds = dict(classifier.config.thresholds)
    suite = result["functional_suite_halves"]["test"]
    return {"model": name, "cpu_ms_per_text": cpu_ms, "accurate_share": accurate_share,
            "roc_auc": {label: result["test"][label].get("roc_auc") for label in LABELS},
            "recall": {label: result["test"][label].get("recall") for label in LABELS},
            "precision": {label: result["test"][label].get("precision") for label in LABELS},
            "clean_test_flagged": result["realistic_clean"]["pooled"]["any_label"],
            "suite_test_half": {k: suite[k] for k in ("accuracy", "harmful_cases_caught", "harmless_cases_cleared")},
            "validation_any_label_recall": validation_record(val, val_scores, thresholds)["any_label_recall"],
            "category_confusion": result["category_confusion"], "thresholds": thresholds}


def render(rows: list[dict], band) -> str:
    head = ("| model | CPU-ms/text | to accurate | ROC AUC H / HR / V / SH / S | recall at threshold "
            "H / HR / V / SH / S | clean test flagged | suite test half | harmful val any-label recall |")
    lines = [head, "|---|---:|---:|---|---|---:|---:|---:|"]
    for row in rows:
        share = "" if row["accurate_share"] is None else f"{row['accurate_share']:.1%}"
        aucs = " / ".join(f"{row['roc_auc'][label]:.3f}" for label in LABELS)
        recalls = " / ".join(f"{row['recall'][label]:.2f}" for label in LABELS)
        lines.append(f"| {row['model']} | {row['cpu_ms_per_text']} | {share} | {aucs} | {recalls} | "
                     f"{row['clean_test_flagged']:.1%} | {row['suite_test_half']['accuracy']:.3f} | "
                     f"{row['validation_any_label_recall']:.3f} |")
    bands = ", ".join(f"{label} {value}" for label, value in band.items()) if isinstance(band, dict) else band
    lines.append(f"\nCascade band: {bands} (logit units around each label's fast threshold); \"to accurate\" is the "
                 "share of the bench corpus's windows it sends on. Labels: "
                 "H hate, HR harassment, V violence, SH self-harm, S sexual.\n\nCategory confusion on the test "
                 "split (texts of the row's category flagged under the column's label, where the source says "
                 "they are not that):\n")
    for row in rows:
        lines.append(f"- {row['model']}: " + "; ".join(
            f"{label} -> " + ", ".join(f"{other} {rate:.1%}" for other, rate in others.items())
            for label, others in row["category_confusion"].items() if others))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets_dir")
    parser.add_argument("--band", type=float, help="the cascade's band (default: model/accurate/artifact/cascade.json)")
    parser.add_argument("--choose-band", action="store_true")
    parser.add_argument("--limit", type=int, help="only N texts per set (smoke runs)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--output", default=ACCURATE_ARTIFACT_DIR)
    args = parser.parse_args(argv)
    splits = load_splits(args.datasets_dir)
    val = splits["val"][:args.limit]
    fast = load_engine(FAST_DIR, "onnx", "int8", args.threads)
    accurate = load_engine(ACCURATE_DIR, "onnx", "int8", args.threads)
    if args.choose_band:
        choice = choose(fast, accurate, val, args.datasets_dir, splits)
        with open(BAND_FILE, "w") as f:
            json.dump(choice, f, indent=2)
            f.write("\n")
        print(json.dumps({k: choice[k] for k in ("band", "chosen", "met")}), flush=True)
    choice = read_choice(BAND_FILE)
    band = args.band if args.band is not None else choice["band"]

    test, cases = splits["test"][:args.limit], load_suite()
    clean = load_clean_sets(args.datasets_dir, splits)["test"][:args.limit]
    near = near_duplicates([c["text"] for c in cases], [e.text for e in written_examples()])
    harmful_val = [e for e in val if any(v and m for v, m in zip(e.labels, e.mask))]
    corpus = load_texts(CORPUS_FILE, CPU_TEXTS)[:args.limit]
    rows = []
    for name, classifier in (("fast (moderation-minilm)", fast), ("accurate (moderation-mpnet)", accurate),
                             ("accurate stage on every text (both, blended)",
                              load_cascade(choice, EVERY_TEXT, args.threads)),
                             ("cascade", load_cascade(choice, args.band, args.threads))):
        started = time.time()
        result = evaluate(classifier, test, cases, clean, near)
        val_scores = engine_scores(classifier, [e.text for e in harmful_val])
        counts = getattr(classifier, "stage_counts", None)
        before = dict(counts or {})
        cpu_ms = cpu_ms_per_text(classifier, corpus)
        share = None
        if counts is not None:  # of the bench corpus's windows: realistic traffic, what sets the CPU
            sent = {stage: counts[stage] - before[stage] for stage in counts}
            share = round(sent["accurate"] / max(1, sent["fast"]), 4)
        rows.append(summary(name, classifier, result, harmful_val, val_scores, cpu_ms, share))
        print(f"{name}: {time.time() - started:.0f}s", flush=True)
    markdown = render(rows, band)
    with open(os.path.join(args.output, "compare.json"), "w") as f:
        json.dump({"band": band, "models": rows}, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.output, "compare.md"), "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
