"""model/calibrate.py: Platt scaling folded into the head, thresholds for a false-flag budget."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from model.calibrate import (
    ANY_LABEL_BUDGET,
    PER_LABEL_BUDGETS,
    apply_platt,
    budget_thresholds,
    fit_platt,
    flag_rates,
    fold_into_head,
    source_weights,
    validation_record,
)
from model.data import LABELS, make_example
from model.modeling import ARTIFACT_DIR


def test_platt_recovers_a_known_scaling():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(4000, len(LABELS)))
    truth = 1 / (1 + np.exp(-(0.5 * z - 1.0)))
    labels = (rng.random(truth.shape) < truth).astype(int)
    fitted = fit_platt(1 / (1 + np.exp(-z)), labels, np.ones_like(labels, dtype=bool))
    for label in LABELS:
        assert abs(fitted[label]["a"] - 0.5) < 0.1 and abs(fitted[label]["b"] + 1.0) < 0.2, fitted[label]


def test_folding_into_the_head_gives_the_calibrated_scores():
    torch.manual_seed(0)
    weights = {"classifier.weight": torch.randn(len(LABELS), 8).half(),
               "classifier.bias": torch.randn(len(LABELS)).half()}
    platt = {label: {"a": 0.5 + j / 10, "b": j - 2.0} for j, label in enumerate(LABELS)}
    pooled = torch.randn(16, 8)
    raw = torch.sigmoid(pooled @ weights["classifier.weight"].float().T + weights["classifier.bias"].float())
    folded = fold_into_head(weights, platt)
    served = torch.sigmoid(pooled @ folded["classifier.weight"].float().T + folded["classifier.bias"].float())
    assert np.allclose(served.numpy(), apply_platt(raw.double().numpy(), platt), atol=5e-3)


def test_thresholds_keep_each_label_and_any_label_within_the_budget():
    rng = np.random.default_rng(1)
    scores = rng.beta(0.5, 8, size=(3000, len(LABELS)))
    sources = ["a"] * 2000 + ["b"] * 900 + ["c"] * 100
    thresholds = budget_thresholds(scores, sources)
    per_label, any_label = flag_rates(scores, thresholds, source_weights(sources))
    assert all(rate <= PER_LABEL_BUDGETS[label] for label, rate in per_label.items()), per_label
    assert any_label <= ANY_LABEL_BUDGET
    assert abs(source_weights(sources).sum() - 1) < 1e-9


def test_the_committed_model_is_calibrated_within_the_budget():
    with open(os.path.join(ARTIFACT_DIR, "model.json")) as f:
        info = json.load(f)
    rule = info["calibration"]["threshold_rule"]
    assert info["calibration"]["method"] == "platt" and set(info["calibration"]["labels"]) == set(LABELS)
    assert all(rate <= rule["per_label_budget"][label] for label, rate in rule["dev_flag_rate"]["per_label"].items())
    assert rule["dev_flag_rate"]["any_label"] <= rule["any_label_budget"] <= 0.08


def test_validation_record_counts_a_harmful_text_flagged_by_any_label_and_skips_unknown_labels():
    """Any-label recall is over texts with a known positive label; a label the source does not know is
    neither a positive nor a negative for that label."""
    hate, harassment = LABELS.index("hate"), LABELS.index("harassment")

    def example(positive=None, unknown=None):
        labels = [int(j == positive) for j in range(len(LABELS))]
        return make_example("text", "src", "bucket", labels, [j != unknown for j in range(len(LABELS))])

    examples = [example(hate), example(hate), example(harassment), example(), example(), example(unknown=hate)]
    scores = np.zeros((len(examples), len(LABELS)))
    scores[0, hate] = 0.9             # caught by its own label
    scores[2, hate] = 0.9             # a harassment text caught by hate: counts for any label
    scores[3, hate] = 0.6             # a clean text over the hate threshold
    scores[5, hate] = 0.99            # unknown for hate: not a false positive
    thresholds = dict.fromkeys(LABELS, 0.5)
    record = validation_record(examples, scores, thresholds)
    assert record["harmful_texts"] == 3 and record["any_label_recall"] == round(2 / 3, 4)
    # hate flags texts 0, 2 and 3 (not 5): one of three is hate
    assert record["labels"]["hate"]["recall"] == 0.5 and record["labels"]["hate"]["precision"] == 0.3333
    assert record["labels"]["hate"]["support_positive"] == 2
    assert record["labels"]["harassment"]["recall"] == 0.0
