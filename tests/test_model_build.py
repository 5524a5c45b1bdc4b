"""The bundled model builds reproducibly from the committed artifact and behaves."""

import json
import os
import subprocess
import sys

import pytest

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_EXAMPLE = "martians are ruthless animals we should eradicate them all"
FIVE_LABELS = ["hate", "harassment", "violence", "self-harm", "sexual"]
PLAIN_SENTENCES = [
    "I love my new puppy",
    "the weather is nice today",
    "I disagree with your tax policy",
    "my neighbour is from Mexico and cooks great food",
]


@pytest.fixture(scope="module")
def built_model(tmp_path_factory):
    output = tmp_path_factory.mktemp("model") / "moderation-minilm"
    result = subprocess.run([sys.executable, "-m", "model.build", "--output", str(output)],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return {"path": result.stdout.strip().splitlines()[-1], "requested": str(output)}


def test_build_prints_the_folder(built_model):
    # How long it takes is a figure of `python -m bench.model_build`, not a check here.
    assert os.path.samefile(built_model["path"], built_model["requested"])
    assert os.path.isabs(built_model["path"])
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "README.md"):
        assert os.path.isfile(os.path.join(built_model["path"], name)), name


def test_weights_are_byte_identical_to_the_recorded_build(built_model):
    from model.build import expected_built_sha256, sha256_of

    assert sha256_of(os.path.join(built_model["path"], "model.safetensors")) == expected_built_sha256()


def test_config_is_a_standard_multi_label_classifier(built_model):
    with open(os.path.join(built_model["path"], "config.json")) as f:
        config = json.load(f)
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {str(i): label for i, label in enumerate(FIVE_LABELS)}
    assert config["label2id"] == {label: i for i, label in enumerate(FIVE_LABELS)}
    assert set(config["thresholds"]) == set(FIVE_LABELS)
    assert all(0 < value < 1 for value in config["thresholds"].values())


def _flagged(scores, thresholds):
    return [label for label, score in scores.items() if score >= thresholds[label]]


def test_auto_model_flags_the_seed_example_and_not_plain_sentences(built_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(built_model["path"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(built_model["path"])
    texts = [SEED_EXAMPLE] + PLAIN_SENTENCES
    with torch.no_grad():
        probabilities = torch.sigmoid(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits)
    thresholds = model.config.thresholds
    results = {text: _flagged({model.config.id2label[j]: float(p) for j, p in enumerate(row)}, thresholds)
               for text, row in zip(texts, probabilities, strict=True)}
    assert "hate" in results[SEED_EXAMPLE], results
    for text in PLAIN_SENTENCES:
        assert results[text] == [], (text, results[text])


def test_pipeline_loads_it_without_custom_code(built_model):
    from transformers import pipeline

    classifier = pipeline("text-classification", model=built_model["path"], top_k=None)
    thresholds = classifier.model.config.thresholds
    outputs = classifier([SEED_EXAMPLE] + PLAIN_SENTENCES)
    flagged = [_flagged({item["label"]: item["score"] for item in output}, thresholds)
               for output in outputs]
    assert flagged[0], outputs[0]
    assert flagged[1:] == [[]] * len(PLAIN_SENTENCES), outputs[1:]


def test_rebuilding_an_up_to_date_folder_is_a_no_op(built_model):
    from model.build import build

    model_file = os.path.join(built_model["path"], "model.safetensors")
    before = os.stat(model_file).st_mtime_ns
    assert build(output_dir=built_model["path"]) == built_model["path"]
    assert os.stat(model_file).st_mtime_ns == before
