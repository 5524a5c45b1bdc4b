"""Choose a cascade's settings on the validation split: its blend, the blend's thresholds and its bands.

    python -m model.compare ../shared/datasets --choose-band   # writes model/accurate/artifact/cascade.json

1. The blend (the accurate stage's verdict): per label a logistic regression on the two models' logits,
   fitted on the validation split's known examples (stacking; the two models' errors differ, so the pair
   ranks better than either: validation ROC AUC per label in cascade.json).
2. The blend's thresholds: the same false-flag budgets as each model's own (model/calibrate.py), on the
   development half of realistic clean text.
3. The bands, one per label, from BAND_GRID: of the settings whose cascade keeps every label's validation
   ROC AUC within AUC_GAP of the accurate model's, the one that sends the fewest validation texts to the
   accurate stage (its CPU). One band for every label missed the gap on violence (few positives, the
   fast model ranks them worst) unless it sent 38% of validation texts on.

Everything here is simulated on whole texts scored once by each model, with worker/cascade.py's own
functions, so choosing costs no more than scoring the validation split twice. Never reads a public
evaluation set.
"""

from __future__ import annotations

import itertools

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from model.calibrate import budget_thresholds, logit
from model.clean_sets import load_clean_sets
from model.data import LABELS
from model.evaluate import engine_scores, label_arrays
from worker.cascade import blended, fast_decisions

BAND_GRID = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
AUC_GAP = 0.01  # the cascade's ROC AUC per label may trail the accurate model's by at most this


def fit_blend(fast: np.ndarray, accurate: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
    """Per label [w_fast, w_accurate, bias] of sigmoid(w_fast * logit(fast) + w_accurate * logit(accurate) + bias),
    fitted on the examples whose source knows the label."""
    blend = {}
    for j, label in enumerate(LABELS):
        known = mask[:, j]
        features = np.c_[logit(fast[known, j]), logit(accurate[known, j])]
        model = LogisticRegression(C=1e4, max_iter=1000).fit(features, labels[known, j])
        blend[label] = [round(float(model.coef_[0, 0]), 4), round(float(model.coef_[0, 1]), 4),
                        round(float(model.intercept_[0]), 4)]
    return blend


def blend_array(blend: dict, labels=LABELS) -> np.ndarray:
    return np.array([blend[label] for label in labels], dtype=np.float64)


def simulated_cascade(fast: np.ndarray, accurate: np.ndarray, fast_thresholds: dict, thresholds: dict,
                      bands, blend: dict | None, labels=LABELS) -> tuple[np.ndarray, np.ndarray]:
    """What the cascade answers for whole texts of one window each, and which texts it sends on:
    worker/cascade.py's decision, with the accurate stage's rows computed once for every text. Columns in the
    order of `labels`; bands one per label."""
    moved, unsure = fast_decisions(fast, logit(np.array([fast_thresholds[label] for label in labels])),
                                   logit(np.array([thresholds[label] for label in labels])), np.asarray(bands))
    verdict = blended(fast, accurate, None if blend is None else blend_array(blend, labels))
    return np.where(unsure[:, None], verdict, moved), unsure


def aucs(labels: np.ndarray, mask: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([roc_auc_score(labels[mask[:, j], j], scores[mask[:, j], j]) for j in range(len(LABELS))])


def choose(fast, accurate, val, datasets_dir: str, splits) -> dict:
    """cascade.json's content (module docstring) for two loaded models (worker/inference.py classifiers)."""
    texts = [e.text for e in val]
    fast_val, accurate_val = engine_scores(fast, texts), engine_scores(accurate, texts)
    clean = load_clean_sets(datasets_dir, splits)["dev"]
    clean_texts = [c.text for c in clean]
    fast_clean, accurate_clean = engine_scores(fast, clean_texts), engine_scores(accurate, clean_texts)
    labels, mask = label_arrays(val)
    blend = fit_blend(fast_val, accurate_val, labels, mask)
    thresholds = budget_thresholds(blended(fast_clean, accurate_clean, blend_array(blend)),
                                   [c.source for c in clean])
    fast_thresholds = dict(fast.config.thresholds)
    reference = aucs(labels, mask, accurate_val)
    tried = []
    for bands in sorted(itertools.product(BAND_GRID, repeat=len(LABELS)),
                        key=lambda b: (_share(fast_val, fast_thresholds, b), sum(b))):
        scores, unsure = simulated_cascade(fast_val, accurate_val, fast_thresholds, thresholds, bands, blend)
        gaps = reference - aucs(labels, mask, scores)
        tried.append({"band": dict(zip(LABELS, bands)), "accurate_share": round(float(unsure.mean()), 4),
                      "auc_gap": {label: round(float(g), 4) for label, g in zip(LABELS, gaps)}})
        if gaps.max() <= AUC_GAP:
            break
    everything = blended(fast_val, accurate_val, blend_array(blend))
    return {"band": tried[-1]["band"], "blend": blend, "thresholds": thresholds,
            "chosen_on": f"validation split ({len(val)} texts); thresholds on the clean development half "
                         f"({len(clean)} texts)",
            "rule": f"per label bands from {list(BAND_GRID)}: the fewest validation texts sent on whose cascade "
                    f"keeps every label's ROC AUC within {AUC_GAP} of the accurate model's",
            "validation_roc_auc": {name: dict(zip(LABELS, np.round(values, 4).tolist())) for name, values in (
                ("fast", aucs(labels, mask, fast_val)), ("accurate", reference),
                ("blend", aucs(labels, mask, everything)))},
            "tried": len(tried), "chosen": tried[-1], "met": bool(max(tried[-1]["auc_gap"].values()) <= AUC_GAP)}


def _share(fast: np.ndarray, fast_thresholds: dict, bands) -> float:
    """The share of texts the bands send to the accurate stage."""
    threshold_logits = logit(np.array([fast_thresholds[label] for label in LABELS]))
    return float(fast_decisions(fast, threshold_logits, threshold_logits, np.asarray(bands))[1].mean())
