"""Calibrate the bundled model's scores per label and choose its thresholds for a false-flag budget.

    python -m model.calibrate ../shared/datasets      # = make calibrate-model; then make eval-model

1. Platt scaling per label on the validation split (never trained on), scored as the worker serves it
   (ONNX Runtime int8, long texts in windows): a label's score becomes sigmoid(a * logit + b), so a
   score of 0.3 means about the same chance of that label whichever label it is. The scaling is folded
   into the classifier head (weight * a, bias * a + b), so every engine serves calibrated scores with
   no change to the worker.
2. Thresholds for a false-flag budget on realistic clean text (model/clean_sets.py, development half):
   per label the lowest threshold that flags at most its PER_LABEL_BUDGETS share of it, tightened until
   any label flags at most ANY_LABEL_BUDGET (`--thresholds-only` redoes just this step). The test half
   is left for `make eval-model` to report.

Thresholds stay in model/artifact/model.json (the build writes them into config.json's `thresholds`,
which shared/model_registry.py reads for worker/policy.py).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from transformers import AutoTokenizer

from model import build
from model.checks import HARD_CASES, REQUIRED_CHECKS, run_checks
from model.clean_sets import load_clean_sets
from model.data import LABELS, load_splits
from model.evaluate import engine_scores, label_arrays, label_metrics, load_engine
from model.modeling import ARTIFACT_DIR, BASE_MODEL_DIR, build_classifier

# Share of realistic clean text each label may flag. Not an even 2% each: hate and harassment are the weak
# spots (validation recall 0.24 / 0.15 at 2%), while self-harm and sexual keep their recall (0.89 / 0.91) at
# 0.5%, and their 2% thresholds (0.015 / 0.03) had texts of other categories bleed into them ("I hope you die
# in a fire" came back self-harm). Chosen on the validation split and the clean development half only.
PER_LABEL_BUDGETS = {"hate": 0.025, "harassment": 0.025, "violence": 0.015, "self-harm": 0.005, "sexual": 0.005}
ANY_LABEL_BUDGET = 0.07  # share any label may flag on the development half (the target is 8% on unseen text)
BUDGET_STEP = 0.125  # the per-label budgets shrink by this share of themselves until the any-label one holds
THRESHOLD_GRID = np.round(np.arange(0.01, 0.995, 0.005), 3)
EPSILON = 1e-6


def logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(scores, EPSILON, 1 - EPSILON)
    return np.log(clipped / (1 - clipped))


def fit_platt(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict[str, dict[str, float]]:
    """Per label (a, b) with P(label) = sigmoid(a * logit(score) + b), fitted on the known examples."""
    fitted = {}
    for j, label in enumerate(LABELS):
        known = mask[:, j]
        model = LogisticRegression(C=1e4, max_iter=1000)
        model.fit(logit(scores[known, j]).reshape(-1, 1), labels[known, j])
        fitted[label] = {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0]),
                         "positives": int(labels[known, j].sum()), "examples": int(known.sum())}
    return fitted


def apply_platt(scores: np.ndarray, platt: dict) -> np.ndarray:
    a = np.array([platt[label]["a"] for label in LABELS])
    b = np.array([platt[label]["b"] for label in LABELS])
    return 1 / (1 + np.exp(-(a * logit(scores) + b)))


def source_weights(sources: list[str]) -> np.ndarray:
    """Each source weighs the same in a pooled rate, however many texts it holds."""
    counts = {source: sources.count(source) for source in set(sources)}
    return np.array([1 / (len(counts) * counts[source]) for source in sources])


def flag_rates(scores: np.ndarray, thresholds: dict, weights: np.ndarray) -> tuple[dict, float]:
    """Weighted share of texts flagged per label and by any label."""
    flags = scores >= np.array([thresholds[label] for label in LABELS])
    return ({label: float(weights @ flags[:, j]) for j, label in enumerate(LABELS)},
            float(weights @ flags.any(axis=1)))


def budget_thresholds(scores: np.ndarray, sources: list[str], per_label=None,
                      any_label=ANY_LABEL_BUDGET) -> dict[str, float]:
    """The lowest grid threshold per label within its budget (PER_LABEL_BUDGETS), the budgets tightened in
    steps of BUDGET_STEP of themselves until the any-label rate is within its budget as well."""
    weights = source_weights(sources)
    budgets = per_label or PER_LABEL_BUDGETS
    scale = 1.0
    while True:
        thresholds = {}
        for j, label in enumerate(LABELS):
            rates = np.array([weights @ (scores[:, j] >= t) for t in THRESHOLD_GRID])
            within = np.flatnonzero(rates <= budgets[label] * scale)
            thresholds[label] = float(THRESHOLD_GRID[within[0]] if len(within) else THRESHOLD_GRID[-1])
        if flag_rates(scores, thresholds, weights)[1] <= any_label or scale <= BUDGET_STEP:
            return thresholds
        scale -= BUDGET_STEP


def validation_record(examples, scores: np.ndarray, thresholds: dict) -> dict:
    """What chooses between trained models: the calibrated validation split at the served thresholds, per
    label (ROC AUC, precision, recall) and any-label recall over the texts with a known positive label."""
    labels, mask = label_arrays(examples)
    harmful = (labels * mask).any(axis=1)
    flagged = (scores >= np.array([thresholds[label] for label in LABELS])).any(axis=1)
    keep = ("roc_auc", "precision", "recall", "support_positive")
    return {"labels": {label: {k: entry.get(k) for k in keep}
                       for label, entry in label_metrics(examples, scores, thresholds, n_examples=0).items()},
            "any_label_recall": round(float(flagged[harmful].mean()), 4), "harmful_texts": int(harmful.sum())}


def fold_into_head(weights: dict, platt: dict, head: str = "classifier") -> dict:
    """The artifact's weights with sigmoid(a * logit + b) built into the classifier's output layer (`head`)."""
    a = torch.tensor([platt[label]["a"] for label in LABELS], dtype=torch.float32)
    b = torch.tensor([platt[label]["b"] for label in LABELS], dtype=torch.float32)
    folded = dict(weights)
    folded[f"{head}.weight"] = (weights[f"{head}.weight"].float() * a[:, None]).to(torch.float16)
    folded[f"{head}.bias"] = (weights[f"{head}.bias"].float() * a + b).to(torch.float16)
    return folded


def combined(previous: dict | None, platt: dict) -> dict:
    """The whole scaling since training when an already calibrated head is calibrated again."""
    if not previous:
        return platt
    return {label: {**platt[label], "a": platt[label]["a"] * previous[label]["a"],
                    "b": platt[label]["a"] * previous[label]["b"] + platt[label]["b"]} for label in LABELS}


def calibrate(datasets_dir: str, artifact_dir: str = ARTIFACT_DIR, threads: int = 0, refit: bool = True) -> dict:
    """Platt scaling (unless refit is False: the head as it is, thresholds chosen again) and thresholds."""
    with tempfile.TemporaryDirectory() as work:
        model_path = build.build(artifact_dir, os.path.join(work, "model"))
        classifier = load_engine(model_path, "onnx", "int8", threads)
        splits = load_splits(datasets_dir)
        clean_dev = load_clean_sets(datasets_dir, splits)["dev"]
        val_scores = engine_scores(classifier, [e.text for e in splits["val"]])
        clean_scores = engine_scores(classifier, [c.text for c in clean_dev])
    labels, mask = label_arrays(splits["val"])
    platt = fit_platt(val_scores, labels, mask) if refit else {label: {"a": 1.0, "b": 0.0} for label in LABELS}
    clean_calibrated, clean_sources = apply_platt(clean_scores, platt), [c.source for c in clean_dev]
    thresholds = budget_thresholds(clean_calibrated, clean_sources)
    per_label, any_label = flag_rates(clean_calibrated, thresholds, source_weights(clean_sources))
    validation = validation_record(splits["val"], apply_platt(val_scores, platt), thresholds)

    weights_path = os.path.join(artifact_dir, "weights.safetensors")
    info_path = os.path.join(artifact_dir, "model.json")
    with open(info_path) as f:
        info = json.load(f)
    previous = info.get("calibration", {})
    if refit:
        save_file(fold_into_head(load_file(weights_path), platt), weights_path, metadata={"format": "pt"})
        os.chmod(weights_path, 0o644)
    record = {"method": "platt",
              "fitted_on": (f"validation split, {len(splits['val'])} texts, onnx int8, windows" if refit
                            else previous.get("fitted_on")),
              "labels": combined(previous.get("labels"), platt) if refit else previous.get("labels"),
              "threshold_rule": {"per_label_budget": PER_LABEL_BUDGETS, "any_label_budget": ANY_LABEL_BUDGET,
                                 "chosen_on": f"realistic clean text, development half ({len(clean_dev)} texts)",
                                 "dev_flag_rate": {"per_label": {k: round(v, 4) for k, v in per_label.items()},
                                                   "any_label": round(any_label, 4)}},
              "validation": validation}
    info.update(thresholds=thresholds, calibration=record)
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    metrics_path = os.path.join(artifact_dir, "metrics.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    metrics.update(thresholds=thresholds, calibration=record)
    # The training-time test report was at the old thresholds: `make eval-model` measures the served model
    # instead. The fixed checks are rerun at the new ones (torch, fp16 weights).
    served, tokenizer = build_classifier(load_file(weights_path)), AutoTokenizer.from_pretrained(BASE_MODEL_DIR)
    metrics["fp16"] = {name: run_checks(served, tokenizer, thresholds, cases)
                       for name, cases in (("required_checks", REQUIRED_CHECKS), ("hard_cases", HARD_CASES))}
    metrics.pop("engines", None)  # measured on the old head; `make eval-model` records them again
    with open(metrics_path, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    with tempfile.TemporaryDirectory() as build_dir:
        build.write_checksums(artifact_dir, build.build(artifact_dir, build_dir))
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets_dir", help="the shared datasets folder (../shared/datasets)")
    parser.add_argument("--artifact", default=ARTIFACT_DIR)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--thresholds-only", action="store_true",
                        help="keep the head's calibration; choose the thresholds again (after changing the budgets)")
    args = parser.parse_args(argv)
    record = calibrate(args.datasets_dir, args.artifact, args.threads, refit=not args.thresholds_only)
    print(json.dumps({label: {k: round(v, 3) for k, v in entry.items()} for label, entry in record["labels"].items()}))
    print("thresholds", json.dumps(json.load(open(os.path.join(args.artifact, "model.json")))["thresholds"]))
    print("development half flag rates", json.dumps(record["threshold_rule"]["dev_flag_rate"]))
    print("validation at the thresholds", json.dumps(record["validation"]))


if __name__ == "__main__":
    main()
