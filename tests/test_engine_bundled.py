"""The bundled model: ONNX Runtime and torch give the same answers, at the trained sequence length."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from model.checks import HARD_CASES, REQUIRED_CHECKS
from model.data import load_extra_examples
from model.modeling import ARTIFACT_DIR
from worker.inference import TextClassifier

NO_TOKEN_LIMIT = 10**9


@pytest.fixture(scope="module")
def bundled_path():
    from model.build import build

    return build()


@pytest.fixture(scope="module")
def sample():
    """About 300 short texts from the repo plus texts far longer than the trained length."""
    short = [text for text, _ in REQUIRED_CHECKS + HARD_CASES] + [e.text for e in load_extra_examples()]
    long = [" ".join(short[i:i + 12]) for i in range(0, 120, 12)]
    return short + long


@pytest.fixture(scope="module")
def classifiers(bundled_path, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("engine-cache"))
    return {(engine, quantize): TextClassifier(bundled_path, "cpu", quantize, 0, engine, cache)
            for engine, quantize in (("torch", "none"), ("onnx", "none"), ("onnx", "int8"))}


def scores(classifier, texts):
    return np.array(classifier.score_many(texts, 32, NO_TOKEN_LIMIT))


def test_sample_includes_texts_beyond_the_trained_length(classifiers, sample):
    classifier = classifiers["torch", "none"]
    assert max(classifier.token_lengths(sample)) == 64
    assert sum(windows > 1 for windows in classifier.windows_per_text(sample)) >= 10


def test_onnx_fp32_and_torch_fp32_agree_within_0_02(classifiers, sample):
    reference = scores(classifiers["torch", "none"], sample)
    exported = scores(classifiers["onnx", "none"], sample)
    assert classifiers["onnx", "none"].engine == "onnx"
    assert np.abs(exported - reference).max() < 0.02


def test_default_engine_onnx_int8_stays_close_to_torch_fp32(classifiers, sample):
    """Dynamic int8 moves single scores more than fp32 does (activations are quantised per pass);
    held-out AUC per label is recorded in model/artifact/metrics.json (`python -m model.evaluate --record`)."""
    reference = scores(classifiers["torch", "none"], sample)
    quantized = scores(classifiers["onnx", "int8"], sample)
    difference = np.abs(quantized - reference)
    assert difference.mean() < 0.02
    thresholds = np.array([classifiers["onnx", "int8"].config.thresholds[label]
                           for label in classifiers["onnx", "int8"].config.id2label.values()])
    same_flags = ((quantized >= thresholds) == (reference >= thresholds)).all(axis=1).mean()
    assert same_flags >= 0.95, same_flags


def test_recorded_held_out_auc_of_default_engine_within_0_005_of_fp32():
    """0.005 per label where the test split has enough positives for that to mean something; on a label
    with under 100 (violence, self-harm, sexual: 17-29), one swapped pair moves ROC AUC by up to 0.002,
    so 0.01 there (the model card reports the gap)."""
    with open(os.path.join(ARTIFACT_DIR, "metrics.json")) as f:
        engines = json.load(f).get("engines")
    if not engines:
        pytest.fail("metrics.json has no engines section: run `python -m model.evaluate --record`")
    for label, entry in engines["torch-fp32"]["test"].items():
        if "roc_auc" in entry:
            tolerance = 0.005 if entry["support_positive"] >= 100 else 0.01
            assert abs(engines["onnx-int8"]["test"][label]["roc_auc"] - entry["roc_auc"]) <= tolerance, label


# A harmless paragraph of about 60 tokens: alone it is one window.
PARAGRAPH = ("The community garden on Elm Street opened its spring season this weekend, and volunteers spent "
             "the morning planting tomatoes, peppers and herbs along the new raised beds. Children painted signs "
             "for each row while their parents shared coffee and talked about the summer harvest festival.")


def test_reads_long_texts_in_windows_of_the_trained_length(bundled_path, classifiers):
    with open(os.path.join(ARTIFACT_DIR, "model.json")) as f:
        trained = json.load(f)["max_length"]
    with open(os.path.join(bundled_path, "tokenizer_config.json")) as f:
        assert json.load(f)["model_max_length"] == trained == 64
    long_text = " ".join([PARAGRAPH] * 8)
    for classifier in classifiers.values():
        assert classifier.max_length == trained
        assert classifier.windows_per_text([PARAGRAPH, long_text])[0] == 1
        lengths = classifier.token_lengths([long_text])
        assert len(lengths) > 8 and max(lengths) == trained  # every part read, no window past the trained length


def test_a_harmful_sentence_after_a_long_harmless_paragraph_is_flagged(classifiers):
    seed = REQUIRED_CHECKS[0][0]
    texts = [PARAGRAPH, " ".join([PARAGRAPH] * 3) + " " + seed, " ".join([PARAGRAPH] * 3)]
    for key, classifier in classifiers.items():
        thresholds = classifier.config.thresholds
        labels = [classifier.config.id2label[i] for i in range(len(thresholds))]
        plain, hidden, long_plain = (dict(zip(labels, row, strict=True)) for row in scores(classifier, texts))
        assert all(score < thresholds[label] for label, score in plain.items()), (key, plain)
        assert all(score < thresholds[label] for label, score in long_plain.items()), (key, long_plain)
        assert hidden["hate"] >= thresholds["hate"], (key, hidden)
        # Only reading past the first window finds it.
        first_only = classifier.max_text_tokens
        classifier.max_text_tokens = classifier.window_size
        try:
            head = dict(zip(labels, scores(classifier, texts[1:2])[0], strict=True))
        finally:
            classifier.max_text_tokens = first_only
        assert head["hate"] < thresholds["hate"], (key, head)


def test_score_many_tokenizes_each_text_once(classifiers, sample):
    classifier = classifiers["onnx", "int8"]
    tokenizer = classifier.tokenizer
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __call__(self, texts, **kwargs):
            calls.append(len(texts))
            return tokenizer(texts, **kwargs)

    classifier.tokenizer = Counting()
    try:
        classifier.score_many(sample, 16, 512)
    finally:
        classifier.tokenizer = tokenizer
    assert calls == [len(sample)]
