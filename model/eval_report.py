"""The bundled model's evaluation report: held-out split + the functional test suite.

    python -m model.eval_report ../shared/datasets     # = make eval-model

Builds the bundled model and runs it as the worker does (worker/inference.py), once per
recorded engine (torch fp32 and the CPU default, ONNX Runtime int8), on the held-out test
split (per-label ROC AUC, precision, recall and F1 at the shipped thresholds; "any harm"
AUC of the highest score) and on the project's functional suite (model/functional_suite.tsv:
written cases with expected labels, grouped by functionality). Prints the report, writes
model/artifact/eval-report.{md,json} and the engines' figures into metrics.json, and
rebuilds the model folder so that its card shows them.
"""

import argparse
import json
import os
from collections import defaultdict

import numpy as np

from model.build import DEFAULT_OUTPUT_DIR, build, sha256_of
from model.data import FUNCTIONAL_SUITE_PATH, LABELS, load_splits, parse_labels, read_tsv
from model.evaluate import (
    RECORDED_ENGINES,
    engine_name,
    engine_report,
    engine_scores,
    flagged_labels,
    harm_metrics,
    load_engine,
    store_engines,
)
from model.modeling import ARTIFACT_DIR

SUITE_TARGETS = {"overall": 0.85, "trap_group_min": 0.75}
AUC_TOLERANCE = 0.005  # engines must agree on per-label ROC AUC within this
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


def evaluate(classifier, test, cases):
    """One engine on the held-out test split and the functional suite."""
    scores = engine_scores(classifier, [e.text for e in test] + [c["text"] for c in cases])
    test_scores, suite_scores = scores[:len(test)], scores[len(test):]
    return {
        **engine_report(classifier, test, test_scores),
        "held_out_any_harm": harm_metrics(test, test_scores),
        "functional_suite": suite_report(cases, suite_scores, dict(classifier.config.thresholds)),
        "verdicts": [bool(flagged_labels(row, dict(classifier.config.thresholds))) for row in scores],
    }


def parity(results):
    """Largest per-label ROC AUC difference between engines, and how often their verdicts agree."""
    names = list(results)
    gaps = {}
    for label in LABELS:
        aucs = [results[name]["test"][label].get("roc_auc") for name in names]
        gaps[label] = round(max(aucs) - min(aucs), 4) if None not in aucs else None
    verdicts = np.array([results[name]["verdicts"] for name in names])
    return {"engines": names, "max_roc_auc_difference": gaps, "tolerance": AUC_TOLERANCE,
            "verdict_agreement": round(float(np.mean(verdicts.min(axis=0) == verdicts.max(axis=0))), 4)}


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def render_markdown(report):
    results, default = report["engines"], report["default_engine"]
    names = list(results)
    first = results[names[0]]["test"]
    engines = ", ".join(f"`{n}` ({r['engine']} {r['precision']})" for n, r in results.items())
    lines = ["# Bundled model evaluation", "",
             f"Engines: {engines}; `{default}` is what the worker serves on CPU by default.", "",
             "## Held-out test split", ""]
    lines += _table(["label", "threshold", "positives / negatives"]
                    + [f"{n} ROC AUC" for n in names] + [f"{n} F1" for n in names],
                    [[label, first[label]["threshold"],
                      f"{first[label]['support_positive']} / {first[label]['support_negative']}"]
                     + [results[n]["test"][label].get("roc_auc", "-") for n in names]
                     + [results[n]["test"][label].get("f1", "-") for n in names] for label in LABELS])
    lines += ["", "Any harm (highest label score against harmful / harmless, where the source says):", ""]
    harm = results[default]["held_out_any_harm"]
    lines += _table(["source", "harmful / harmless"] + [f"{n} ROC AUC" for n in names],
                    [[source, f"{e['harmful']} / {e['harmless']}"]
                     + [results[n]["held_out_any_harm"][source]["roc_auc"] for n in names]
                     for source, e in harm.items()])
    check = report["parity"]
    largest = max(v for v in check["max_roc_auc_difference"].values() if v is not None)
    lines += ["", f"Parity: largest per-label ROC AUC difference {largest} "
              f"(tolerance {AUC_TOLERANCE}); flagged verdicts agree on {check['verdict_agreement']:.2%} of texts.", ""]
    suite = results[default]["functional_suite"]
    lines += ["## Functional suite (model/functional_suite.tsv)", ""]
    for n in names:
        s = results[n]["functional_suite"]
        lines.append(f"- `{n}`: {s['cases']} cases, accuracy **{s['accuracy']}** (target {SUITE_TARGETS['overall']}), "
                     f"harmful caught {s['harmful_cases_caught']}, harmless cleared {s['harmless_cases_cleared']}, "
                     f"lowest trap group {s['trap_group_min']} (target {SUITE_TARGETS['trap_group_min']}), "
                     f"exact label sets {s['exact_label_accuracy']}")
    lines.append("")
    lines += _table(["functionality", "cases"] + [f"{n} accuracy" for n in names],
                    [[group, g["cases"]] + [results[n]["functional_suite"]["by_functionality"][group]["accuracy"]
                                            for n in names] for group, g in suite["by_functionality"].items()])
    lines += ["", f"Failures (`{default}`):", ""]
    lines += [f"- [{f['functionality']}] \"{f['text']}\": expected {', '.join(f['expected']) or 'none'}, "
              f"flagged {', '.join(f['flagged']) or 'none'}" for f in suite["failures"]] or ["- none"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets_dir", help="the shared datasets folder (../shared/datasets)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--artifact", default=ARTIFACT_DIR, help="trained artifact folder (reports go here)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT_DIR, help="model folder to build and evaluate")
    parser.add_argument("--limit", type=int, help="only the first N test examples (smoke runs)")
    args = parser.parse_args(argv)
    model_path = build(args.artifact, args.output)
    test, cases = load_splits(args.datasets_dir)["test"][:args.limit], load_suite()
    results = {engine_name(*pair): evaluate(load_engine(model_path, *pair, threads=args.threads), test, cases)
               for pair in RECORDED_ENGINES}
    report = {"weights_sha256": sha256_of(os.path.join(args.artifact, "weights.safetensors")),
              "default_engine": engine_name(*RECORDED_ENGINES[-1]), "engines": results,
              "parity": parity(results)}
    for result in results.values():
        del result["verdicts"]
    store_engines(os.path.join(args.artifact, "metrics.json"),
                  {name: {k: r[k] for k in ("engine", "precision", "max_length", "test")}
                   for name, r in results.items()})
    markdown = render_markdown(report)
    with open(os.path.join(args.artifact, "eval-report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(os.path.join(args.artifact, "eval-report.md"), "w") as f:
        f.write(markdown)
    build(args.artifact, args.output)  # re-render the model card with the report
    print(markdown)


if __name__ == "__main__":
    main()
