"""Scoring, threshold choice and held-out metrics, shared by training and reporting.

    python -m model.evaluate --engine onnx --quantize int8   # test-split metrics as the worker serves
    python -m model.evaluate --record    # torch fp32 and onnx int8 into artifact/metrics.json + card
"""

import argparse
import json
import os

import numpy as np
import torch
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from model.data import LABELS, bucket_weights, load_splits
from model.modeling import ARTIFACT_DIR, MAX_LENGTH


@torch.no_grad()
def predict_scores(model, tokenizer, texts, batch_size=64):
    """Sigmoid score per label, shape (len(texts), len(LABELS)); batches by length for speed."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    scores = np.zeros((len(texts), len(LABELS)), dtype=np.float64)
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                            max_length=MAX_LENGTH, return_tensors="pt")
        scores[batch] = torch.sigmoid(model(**encoded).logits).double().numpy()
    return scores


def label_arrays(examples):
    labels = np.array([e.labels for e in examples], dtype=np.int64).reshape(-1, len(LABELS))
    mask = np.array([e.mask for e in examples], dtype=bool).reshape(-1, len(LABELS))
    return labels, mask


def best_f1_threshold(y_true, y_score, weight):
    """The threshold (0.01 grid, 0.05..0.95) with the highest weighted F1; ties -> higher."""
    best = (-1.0, 0.5)
    for threshold in np.round(np.arange(0.05, 0.951, 0.01), 2):
        predicted = y_score >= threshold
        true_pos = np.sum(weight[predicted & (y_true == 1)])
        f1 = 2 * true_pos / max(np.sum(weight[predicted]) + np.sum(weight[y_true == 1]), 1e-12)
        if f1 >= best[0]:
            best = (f1, float(threshold))
    return best[1]


def choose_thresholds(examples, scores):
    """Per label, maximise F1 on the validation split weighted to the training mixture.

    Unweighted, Davidson's 75% "offensive" tweets would push the harassment threshold
    down to where ordinary text gets flagged.
    """
    labels, mask = label_arrays(examples)
    weight = np.array(bucket_weights(examples))
    thresholds = {}
    for j, label in enumerate(LABELS):
        known = mask[:, j]
        has_both = known.any() and 0 < labels[known, j].sum() < known.sum()
        thresholds[label] = (best_f1_threshold(labels[known, j], scores[known, j], weight[known])
                             if has_both else 0.5)
    return thresholds


def excerpt(text, length=100):
    return text if len(text) <= length else text[:length - 3] + "..."


def label_metrics(examples, scores, thresholds, n_examples=5):
    """Per label: ROC AUC, precision/recall/F1 at the threshold, support, worst errors."""
    labels, mask = label_arrays(examples)
    report = {}
    for j, label in enumerate(LABELS):
        known = np.flatnonzero(mask[:, j])
        y_true, y_score = labels[known, j], scores[known, j]
        predicted = (y_score >= thresholds[label]).astype(int)
        positives = int(y_true.sum())
        entry = {"threshold": thresholds[label], "support_positive": positives,
                 "support_negative": int(len(y_true) - positives)}
        if 0 < positives < len(y_true):
            precision, recall, f1, _ = precision_recall_fscore_support(
                y_true, predicted, average="binary", zero_division=0)
            entry.update(roc_auc=round(float(roc_auc_score(y_true, y_score)), 4),
                         precision=round(float(precision), 4), recall=round(float(recall), 4),
                         f1=round(float(f1), 4))
        false_pos = [i for i in known[np.argsort(-y_score)] if labels[i, j] == 0
                     and scores[i, j] >= thresholds[label]][:n_examples]
        false_neg = [i for i in known[np.argsort(y_score)] if labels[i, j] == 1
                     and scores[i, j] < thresholds[label]][:n_examples]
        entry["false_positives"] = [
            {"score": round(float(scores[i, j]), 3), "source": examples[i].source,
             "text": excerpt(examples[i].text)} for i in false_pos]
        entry["false_negatives"] = [
            {"score": round(float(scores[i, j]), 3), "source": examples[i].source,
             "text": excerpt(examples[i].text)} for i in false_neg]
        report[label] = entry
    return report


def per_source_metrics(examples, scores, thresholds):
    """The same metrics within each data source, without error examples (they are above)."""
    report = {}
    for source in sorted({e.source for e in examples}):
        rows = [i for i, e in enumerate(examples) if e.source == source]
        subset = label_metrics([examples[i] for i in rows], scores[rows], thresholds, n_examples=0)
        report[source] = {label: {k: v for k, v in entry.items()
                                  if k not in ("false_positives", "false_negatives")}
                          for label, entry in subset.items()}
    return report


def harm_metrics(examples, scores):
    """ROC AUC of the highest label score against "is this text harmful at all", over the
    examples whose source says so, overall and per source (cf. moderation-taxonomy test sets)."""
    rows = [i for i, e in enumerate(examples) if e.harmful in (0, 1)]
    report = {}
    for source in [None] + sorted({examples[i].source for i in rows}):
        subset = [i for i in rows if source is None or examples[i].source == source]
        y_true = np.array([examples[i].harmful for i in subset])
        if 0 < y_true.sum() < len(y_true):
            report[source or "all"] = {
                "roc_auc": round(float(roc_auc_score(y_true, scores[subset].max(axis=1))), 4),
                "harmful": int(y_true.sum()), "harmless": int(len(y_true) - y_true.sum())}
    return report


def category_confusion(examples, scores, thresholds):
    """For the texts of each category (a known positive label): the share flagged under each other label their
    source says they are not (a known negative). A trust-and-safety team routes by category."""
    labels, mask = label_arrays(examples)
    flagged = scores >= np.array([thresholds[label] for label in LABELS])
    table = {}
    for i, label in enumerate(LABELS):
        of_label = (labels[:, i] == 1) & (mask[:, i] == 1)
        table[label] = {}
        for j, other in enumerate(LABELS):
            rows = of_label & (labels[:, j] == 0) & (mask[:, j] == 1)
            if j != i and rows.any():
                table[label][other] = round(float(flagged[rows, j].mean()), 4)
    return table


def flagged_labels(score_row, thresholds):
    return [label for j, label in enumerate(LABELS) if score_row[j] >= thresholds[label]]


# --- Held-out metrics of the built model as a serving engine runs it --------------------------

DEFAULT_DATASETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                    "datasets")
# What metrics.json["engines"] records: the fp32 reference and the CPU default (ONNX Runtime int8).
RECORDED_ENGINES = (("torch", "none"), ("onnx", "int8"))


def engine_name(engine, quantize):
    return f"{engine}-{'fp32' if quantize == 'none' else quantize}"


def load_engine(model_path, engine, quantize, threads=0):
    """The model folder as worker/inference.py's TextClassifier runs it on CPU with this engine."""
    from worker.inference import TextClassifier

    classifier = TextClassifier(model_path, device="cpu", quantize=quantize, threads=threads, engine=engine)
    if [classifier.config.id2label[i] for i in range(len(LABELS))] != list(LABELS):
        raise ValueError(f"{model_path} labels {classifier.config.id2label} are not {LABELS}")
    return classifier


def engine_scores(classifier, texts):
    """Per-label scores (a cascade's rows carry a trailing stage column: left out here)."""
    rows = classifier.score_many(list(texts), 64, 64 * 64)
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)[:, :len(LABELS)]


def engine_report(classifier, examples, scores):
    """Per-label test metrics (no error examples) of one engine's scores."""
    report = label_metrics(examples, scores, dict(classifier.config.thresholds), n_examples=0)
    return {"engine": classifier.engine, "precision": classifier.precision, "max_length": classifier.max_length,
            "test": {label: {k: v for k, v in entry.items() if k not in ("false_positives", "false_negatives")}
                     for label, entry in report.items()}}


def evaluate_engine(model_path, examples, engine, quantize, threads=0):
    """Per-label test metrics of the model folder run by worker/inference.py's TextClassifier with
    this engine and quantisation on CPU: exactly what the worker serves."""
    classifier = load_engine(model_path, engine, quantize, threads)
    return engine_report(classifier, examples, engine_scores(classifier, [e.text for e in examples]))


def store_engines(metrics_path, results):
    """Put per-engine test metrics into metrics.json["engines"] (the model card shows them)."""
    with open(metrics_path) as f:
        metrics = json.load(f)
    metrics["engines"] = results
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")


def record_engines(model_path, datasets_dir, metrics_path, engines=RECORDED_ENGINES, threads=0):
    """Evaluate each (engine, quantize) on the test split and store them in metrics.json["engines"]."""
    test = load_splits(datasets_dir)["test"]
    results = {engine_name(*pair): evaluate_engine(model_path, test, *pair, threads=threads) for pair in engines}
    store_engines(metrics_path, results)
    return results


def main(argv=None):
    from model.build import DEFAULT_OUTPUT_DIR, build

    parser = argparse.ArgumentParser(description="Held-out per-label metrics of the built model as the worker "
                                     "runs it (python -m model.evaluate --engine onnx --quantize int8).")
    parser.add_argument("--datasets", default=DEFAULT_DATASETS_DIR, help="the shared datasets folder")
    parser.add_argument("--model", default="", help="model folder (default: build the bundled model)")
    parser.add_argument("--engine", choices=("torch", "onnx"), default="onnx")
    parser.add_argument("--quantize", choices=("int8", "none"), default="int8")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--record", action="store_true",
                        help=f"evaluate {', '.join(engine_name(*p) for p in RECORDED_ENGINES)} and store them "
                        "in model/artifact/metrics.json (then the model card shows them)")
    args = parser.parse_args(argv)
    model_path = args.model or build(ARTIFACT_DIR, DEFAULT_OUTPUT_DIR)
    if args.record:
        results = record_engines(model_path, args.datasets, os.path.join(ARTIFACT_DIR, "metrics.json"),
                                 threads=args.threads)
        build(ARTIFACT_DIR, DEFAULT_OUTPUT_DIR)  # re-render the model card with the new figures
    else:
        test = load_splits(args.datasets)["test"]
        results = {engine_name(args.engine, args.quantize):
                   evaluate_engine(model_path, test, args.engine, args.quantize, args.threads)}
    for name, result in results.items():
        aucs = ", ".join(f"{label} {entry.get('roc_auc', '-')}" for label, entry in result["test"].items())
        print(f"{name} ({result['engine']} {result['precision']}, {result['max_length']} tokens): ROC AUC {aucs}")


if __name__ == "__main__":
    main()
