"""Cross-source evaluation: how each label does on a source that no training for it has seen.

A pooled held-out split flatters: where one source holds all of a label's positives (self-harm and
sexual come from AILuminate prompts and the written examples), a scorer that knows only which source a
text came from ranks them well. Two views that cannot lean on that:

- within-source ROC AUC of the served model on the test split: positives and negatives of one source;
- leave one source out: per label and source, a logistic-regression probe on the frozen base encoder's
  sentence embeddings (mean-pooled MiniLM-L6, never fine-tuned on these data) is trained on every other
  source and scored on the left-out one, within it. Retraining the served model once per source would
  take hours on this machine; the probe shows how far what the other sources teach carries over.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from model.data import LABELS
from model.modeling import BASE_MODEL_DIR, MAX_LENGTH

NEGATIVES_PER_SOURCE = 800  # every positive is kept; negatives are sampled (by text hash) to this many
MIN_POSITIVES = 10  # a source with fewer positives for a label is not scored for it


def sample_examples(examples, negatives_per_source=NEGATIVES_PER_SOURCE):
    """Every example with a positive label plus up to N others per source, chosen by text hash."""
    keep, negatives = [], {}
    for example in sorted(examples, key=lambda e: hashlib.sha256(e.text.encode()).hexdigest()):
        if any(example.labels):
            keep.append(example)
        elif negatives.get(example.source, 0) < negatives_per_source:
            negatives[example.source] = negatives.get(example.source, 0) + 1
            keep.append(example)
    return keep


@torch.no_grad()
def embed(texts, batch_size=64):
    """Mean-pooled, L2-normalised sentence embeddings of the base encoder (first 64 tokens)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL_DIR)
    model = AutoModel.from_pretrained(BASE_MODEL_DIR).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[batch] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def leave_one_source_out(examples, embeddings=None):
    """Rows {"label", "source", "positives", "negatives", "probe_roc_auc"}: the probe trained without
    `source` (on every other source that knows the label) and scored within it."""
    if embeddings is None:
        embeddings = embed([e.text for e in examples])
    labels = np.array([e.labels for e in examples])
    mask = np.array([e.mask for e in examples], dtype=bool)
    sources = np.array([e.source for e in examples])
    rows = []
    for j, label in enumerate(LABELS):
        for source in sorted(set(sources)):
            held = (sources == source) & mask[:, j]
            train = (sources != source) & mask[:, j]
            positives = int(labels[held, j].sum())
            if positives < MIN_POSITIVES or positives == held.sum() or labels[train, j].sum() == 0:
                continue
            probe = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced")
            probe.fit(embeddings[train], labels[train, j])
            auc = roc_auc_score(labels[held, j], probe.predict_proba(embeddings[held])[:, 1])
            rows.append({"label": label, "source": source, "positives": positives,
                         "negatives": int(held.sum()) - positives, "probe_roc_auc": round(float(auc), 4)})
    return rows
