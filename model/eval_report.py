"""The bundled model's evaluation report: held-out split + the functional test suite.

    python -m model.eval_report ../shared/datasets     # = make eval-model

Scores the held-out test split (per-label ROC AUC, precision, recall and F1 at the
shipped thresholds; "any harm" AUC of the highest score) and the project's functional
suite (model/functional_suite.tsv: written cases with expected labels, grouped by
functionality), prints a summary and writes model/artifact/eval-report.{md,json}.
"""

import argparse
import json
import os
from collections import defaultdict

import numpy as np
from safetensors.torch import load_file
from transformers import AutoTokenizer

from model.data import FUNCTIONAL_SUITE_PATH, LABELS, load_splits, parse_labels, read_tsv
from model.evaluate import flagged_labels, harm_metrics, label_metrics, predict_scores
from model.modeling import ARTIFACT_DIR, BASE_MODEL_DIR, build_classifier

SUITE_TARGETS = {"overall": 0.85, "trap_group_min": 0.75}
TRAP_PREFIX = "trap-"


def load_suite(path=FUNCTIONAL_SUITE_PATH):
    return [{"text": row["text"], "labels": parse_labels(row["labels"], row["text"]),
             "functionality": row["functionality"]} for row in read_tsv(path)]


def case_passes(expected, flagged):
    """Harmless cases pass when nothing is flagged; harmful ones when an expected label is."""
    expected_names = {label for label, value in zip(LABELS, expected, strict=True) if value}
    return not flagged if not expected_names else bool(expected_names & set(flagged))


def suite_report(cases, scores, thresholds):
    groups = defaultdict(list)
    results = []
    for case, row in zip(cases, scores, strict=True):
        flagged = flagged_labels(row, thresholds)
        passed = case_passes(case["labels"], flagged)
        exact = set(flagged) == {label for label, v in zip(LABELS, case["labels"], strict=True) if v}
        groups[case["functionality"]].append(passed)
        results.append({"text": case["text"], "functionality": case["functionality"],
                        "expected": [label for label, v in zip(LABELS, case["labels"], strict=True) if v],
                        "flagged": flagged, "passed": passed, "exact_labels": exact,
                        "scores": {label: round(float(s), 4) for label, s in zip(LABELS, row, strict=True)}})
    by_group = {name: {"accuracy": round(float(np.mean(passed)), 4), "cases": len(passed),
                       "trap": name.startswith(TRAP_PREFIX)} for name, passed in sorted(groups.items())}
    traps = [g["accuracy"] for g in by_group.values() if g["trap"]]
    return {
        "cases": len(results),
        "accuracy": round(float(np.mean([r["passed"] for r in results])), 4),
        "exact_label_accuracy": round(float(np.mean([r["exact_labels"] for r in results])), 4),
        "harmful_cases_caught": round(float(np.mean([r["passed"] for r in results if r["expected"]])), 4),
        "harmless_cases_cleared": round(float(np.mean([r["passed"] for r in results if not r["expected"]])), 4),
        "trap_group_min": min(traps) if traps else None,
        "targets": SUITE_TARGETS,
        "by_functionality": by_group,
        "failures": [r for r in results if not r["passed"]],
    }


def evaluate(model, tokenizer, thresholds, datasets_dir):
    test = load_splits(datasets_dir)["test"]
    test_scores = predict_scores(model, tokenizer, [e.text for e in test])
    cases = load_suite()
    suite_scores = predict_scores(model, tokenizer, [c["text"] for c in cases])
    held_out = label_metrics(test, test_scores, thresholds, n_examples=0)
    return {
        "held_out_test": {label: {k: v for k, v in entry.items()
                                  if k not in ("false_positives", "false_negatives")}
                          for label, entry in held_out.items()},
        "held_out_any_harm": harm_metrics(test, test_scores),
        "functional_suite": suite_report(cases, suite_scores, thresholds),
    }


def render_markdown(report, engine):
    lines = [f"# Bundled model evaluation ({engine})", "",
             "## Held-out test split", "",
             "| label | threshold | ROC AUC | precision | recall | F1 | positives / negatives |",
             "|---|---|---|---|---|---|---|"]
    for label, e in report["held_out_test"].items():
        lines.append(f"| {label} | {e['threshold']} | {e.get('roc_auc', '-')} | {e.get('precision', '-')} | "
                     f"{e.get('recall', '-')} | {e.get('f1', '-')} | "
                     f"{e['support_positive']} / {e['support_negative']} |")
    lines += ["", "Any harm (highest label score vs. harmful/harmless where the source says):", "",
              "| source | ROC AUC | harmful / harmless |", "|---|---|---|"]
    for source, e in report["held_out_any_harm"].items():
        lines.append(f"| {source} | {e['roc_auc']} | {e['harmful']} / {e['harmless']} |")
    suite = report["functional_suite"]
    lines += ["", "## Functional suite (model/functional_suite.tsv)", "",
              f"{suite['cases']} cases: accuracy **{suite['accuracy']}** (target {SUITE_TARGETS['overall']}), "
              f"harmful caught {suite['harmful_cases_caught']}, harmless cleared {suite['harmless_cases_cleared']}, "
              f"lowest trap group {suite['trap_group_min']} (target {SUITE_TARGETS['trap_group_min']}), "
              f"exact label sets {suite['exact_label_accuracy']}.", "",
              "| functionality | cases | accuracy |", "|---|---|---|"]
    for name, g in suite["by_functionality"].items():
        lines.append(f"| {name} | {g['cases']} | {g['accuracy']} |")
    lines += ["", "Failures:", ""]
    lines += [f"- [{f['functionality']}] \"{f['text']}\": expected {', '.join(f['expected']) or 'none'}, "
              f"flagged {', '.join(f['flagged']) or 'none'}" for f in suite["failures"]] or ["- none"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets_dir", help="the shared datasets folder (../shared/datasets)")
    parser.add_argument("--artifact", default=ARTIFACT_DIR, help="artifact folder to evaluate and write to")
    args = parser.parse_args(argv)
    with open(os.path.join(args.artifact, "model.json")) as f:
        thresholds = json.load(f)["thresholds"]
    model = build_classifier(load_file(os.path.join(args.artifact, "weights.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(BASE_MODEL_DIR)
    engine = "torch fp32 (fp16-rounded weights as served)"
    report = {"engine": engine, **evaluate(model, tokenizer, thresholds, args.datasets_dir)}
    markdown = render_markdown(report, engine)
    with open(os.path.join(args.artifact, "eval-report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.artifact, "eval-report.md"), "w") as f:
        f.write(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
