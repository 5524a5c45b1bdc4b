"""model/calibrate.py: Platt scaling folded into the head, thresholds for a false-flag budget."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from model.calibrate import (
    ANY_LABEL_BUDGET,
    PER_LABEL_BUDGET,
    apply_platt,
    budget_thresholds,
    fit_platt,
    flag_rates,
    fold_into_head,
    source_weights,
)
from model.data import LABELS
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
    assert all(rate <= PER_LABEL_BUDGET for rate in per_label.values()), per_label
    assert any_label <= ANY_LABEL_BUDGET
    assert abs(source_weights(sources).sum() - 1) < 1e-9


def test_the_committed_model_is_calibrated_within_the_budget():
    with open(os.path.join(ARTIFACT_DIR, "model.json")) as f:
        info = json.load(f)
    rule = info["calibration"]["threshold_rule"]
    assert info["calibration"]["method"] == "platt" and set(info["calibration"]["labels"]) == set(LABELS)
    assert all(rate <= rule["per_label_budget"] for rate in rule["dev_flag_rate"]["per_label"].values())
    assert rule["dev_flag_rate"]["any_label"] <= rule["any_label_budget"] <= 0.08
