"""Write a cascade folder: a fast and an accurate model served under one model name.

    python -m model.cascade --fast DIR --accurate DIR --band B [--output DIR]   # default build/moderation-cascade
    python -m model.cascade --fast DIR --accurate DIR --choice model/accurate/artifact/cascade.json

The worker scores every window with the fast model and the windows whose scores lie within B (logit units) of
a label's threshold again with the accurate model, whose verdict stands (worker/cascade.py). --choice reads
what `python -m model.compare --choose-band` chose on validation: the band (per label), the blend that stacks
both models' scores as the accurate stage's verdict, and the thresholds for it (--band still overrides the
band). The folder is
what MODELS points at (`MODELS=moderation-cascade=build/moderation-cascade`): the accurate model's config.json
(labels, thresholds) plus a "cascade" key (shared/cascade.py) and a model_version naming both stages, and the
fast model's tokenizer files, with which the API counts tokens (api/tokens.py) as the worker reads windows.
No weights: the stages stay in their folders, named relative to this one, so the three move together.

Both models must be local HF sequence-classification folders, multi-label, with the same labels in the same
order. Prints the folder's absolute path as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil

from shared.cascade import ACCURATE, FAST, KEY, CascadeConfig, check_stages
from shared.config import PROJECT_ROOT, Settings
from shared.model_registry import ModelSpec, build_spec, read_model_config

DEFAULT_OUTPUT_DIR = os.path.join(PROJECT_ROOT, "build", "moderation-cascade")
# Every file a HF tokenizer may be saved as; those the fast model has are copied (the API reads tokenizer.json).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def _stage(role: str, path: str) -> tuple[ModelSpec, dict]:
    config = read_model_config(path)
    if not config:
        raise ValueError(f"the {role} model {path} has no readable config.json (a local HF model folder is needed)")
    # Settings(): the folder's own thresholds, whatever MODEL_THRESHOLDS this shell has.
    return build_spec(role, path, config, Settings()), config


def build(fast_dir: str, accurate_dir: str, band: float | dict[str, float], output_dir: str = DEFAULT_OUTPUT_DIR,
          blend: dict[str, list[float]] | None = None, thresholds: dict[str, float] | None = None) -> str:
    """Write the cascade folder (ValueError when the models cannot make one); returns its absolute path. With a
    blend (per label [w_fast, w_accurate, bias]) its thresholds are needed too: the blend's, not the accurate
    model's."""
    fast_dir, accurate_dir, output_dir = (os.path.abspath(p) for p in (fast_dir, accurate_dir, output_dir))
    if not all(0 <= b < math.inf for b in (band.values() if isinstance(band, dict) else (band,))):
        raise ValueError(f"--band must be numbers >= 0 (logit units), got {band}")
    if (blend is None) != (thresholds is None):
        raise ValueError("a blend needs its own thresholds, and thresholds other than the accurate model's need "
                         "a blend")
    if output_dir in (fast_dir, accurate_dir):
        raise ValueError(f"--output {output_dir} is a stage's folder: the cascade folder must be another one")
    fast, _ = _stage(FAST, fast_dir)
    accurate, config = _stage(ACCURATE, accurate_dir)
    check_stages(fast, accurate)
    if blend is not None and (set(blend) != set(accurate.labels) or set(thresholds) != set(accurate.labels)):
        raise ValueError(f"the blend and its thresholds must name the models' labels {list(accurate.labels)}")
    cascade = CascadeConfig(fast=os.path.relpath(fast_dir, output_dir),
                            accurate=os.path.relpath(accurate_dir, output_dir), band=band,
                            fast_thresholds=fast.thresholds, fast_id=fast.model_id, accurate_id=accurate.model_id,
                            blend=None if blend is None else {label: tuple(w) for label, w in blend.items()})
    band_name = "-".join(f"{b:g}" for b in band.values()) if isinstance(band, dict) else f"{band:g}"
    config = {**config, "thresholds": dict(thresholds or accurate.thresholds), KEY: cascade.to_json(),
              "model_version": f"{fast.model_id}+{accurate.model_id}-band{band_name}{'-blend' if blend else ''}"}
    os.makedirs(output_dir, exist_ok=True)
    for name in TOKENIZER_FILES:
        source, target = os.path.join(fast_dir, name), os.path.join(output_dir, name)
        if os.path.isfile(source):
            shutil.copyfile(source, target)
        elif os.path.isfile(target):  # an earlier build's, from another fast model
            os.remove(target)
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m model.cascade", description=__doc__.split("\n")[0])
    parser.add_argument("--fast", required=True, help="the fast model's folder: scores every window")
    parser.add_argument("--accurate", required=True, help="the accurate model's folder: decides uncertain windows")
    parser.add_argument("--band", type=float,
                        help="logit units around each fast threshold sent on to the accurate model (0: none), for "
                             "every label; overrides --choice's")
    parser.add_argument("--choice", help="a JSON file with the band, blend and thresholds to use "
                                         "(model/accurate/artifact/cascade.json, from python -m model.compare)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT_DIR, help="the cascade folder to write")
    args = parser.parse_args(argv)
    try:
        choice = read_choice(args.choice) if args.choice else {}
        band = args.band if args.band is not None else choice.get("band")
        if band is None:
            raise ValueError("give --band, or --choice with a band")
        print(build(args.fast, args.accurate, band, args.output, choice.get("blend"), choice.get("thresholds")))
    except ValueError as exc:
        raise SystemExit(f"python -m model.cascade: {exc}") from None


def read_choice(path: str) -> dict:
    """The band, and the blend and its thresholds when there is one, from a --choice file."""
    try:
        with open(path) as f:
            choice = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--choice {path}: {exc}") from None
    return {key: choice[key] for key in ("band", "blend", "thresholds") if key in choice}


if __name__ == "__main__":
    main()
