"""The bundled model's evaluation report: held-out split, cross-source, realistic clean text, the suite.

    python -m model.eval_report ../shared/datasets     # = make eval-model

Builds the bundled model and runs it as the worker does (worker/inference.py: long texts in
windows), once per recorded engine (torch fp32 and the CPU default, ONNX Runtime int8), on
- the held-out test split: per-label ROC AUC, precision, recall and F1 at the served thresholds,
  pooled and within each source; "any harm" AUC of the highest score;
- cross-source: leave one source out per label (model/cross_source.py);
- realistic clean text never trained on (model/clean_sets.py, test half): the share flagged at the
  served thresholds, per label and by any label;
- the functional suite (model/functional_suite.tsv), split by template (model/suite.py) into a
  frozen test half and a development half; test cases with a near-duplicate in the training
  examples are also reported apart.
Prints the report, writes model/artifact/eval-report.{md,json} and the engines' figures into
metrics.json, and rebuilds the model folder so that its card shows them.
"""

import argparse
import json
import os
from collections import defaultdict

import numpy as np

from model.build import DEFAULT_OUTPUT_DIR, build, sha256_of
from model.calibrate import flag_rates, source_weights
from model.clean_sets import load_clean_sets
from model.cross_source import leave_one_source_out, sample_examples
from model.data import FUNCTIONAL_SUITE_PATH, LABELS, load_all, load_splits, parse_labels, read_tsv, written_examples
from model.evaluate import (
    RECORDED_ENGINES,
    category_confusion,
    engine_name,
    engine_report,
    engine_scores,
    flagged_labels,
    harm_metrics,
    load_engine,
    per_source_metrics,
    store_engines,
)
from model.modeling import ARTIFACT_DIR
from model.suite import near_duplicates, suite_half

SUITE_TARGETS = {"overall": 0.85, "trap_group_min": 0.75}
AUC_TOLERANCE = 0.005  # engines must agree on per-label ROC AUC within this
TRAP_PREFIX = "trap-"


def load_suite(path=FUNCTIONAL_SUITE_PATH):
    return [{"text": row["text"], "labels": parse_labels(row["labels"], row["text"]),
             "functionality": row["functionality"], "half": suite_half(row["text"])} for row in read_tsv(path)]


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


def clean_report(clean, scores, thresholds):
    """Share of realistic clean texts flagged, per source and pooled (each source weighing the same)."""
    sources = [c.source for c in clean]
    report = {}
    for source in sorted(set(sources)) + ["pooled"]:
        rows = [i for i, s in enumerate(sources) if source in (s, "pooled")]
        per_label, any_label = flag_rates(scores[rows], thresholds, source_weights([sources[i] for i in rows]))
        report[source] = {"texts": len(rows), "any_label": round(any_label, 4),
                          **{label: round(rate, 4) for label, rate in per_label.items()}}
    flagged = [i for i in np.argsort(-scores.max(axis=1)) if flagged_labels(scores[i], thresholds)][:10]
    report["examples"] = [{"source": sources[i], "flagged": flagged_labels(scores[i], thresholds),
                           "text": clean[i].text[:160]} for i in flagged]
    return report


def suite_halves(cases, scores, thresholds, near):
    """The suite's frozen test half (all, and without near-duplicates of training examples) and dev half."""
    halves = {}
    for name, keep in (("test", lambda c: c["half"] == "test"),
                       ("test_without_near_duplicates", lambda c: c["half"] == "test" and c["text"] not in near),
                       ("dev", lambda c: c["half"] == "dev")):
        rows = [i for i, case in enumerate(cases) if keep(case)]
        halves[name] = suite_report([cases[i] for i in rows], scores[rows], thresholds)
    return halves


def evaluate(classifier, test, cases, clean, near):
    """One engine on the held-out test split, realistic clean text and the functional suite."""
    texts = [e.text for e in test] + [c["text"] for c in cases] + [c.text for c in clean]
    scores = engine_scores(classifier, texts)
    test_scores = scores[:len(test)]
    suite_scores = scores[len(test):len(test) + len(cases)]
    clean_scores = scores[len(test) + len(cases):]
    thresholds = dict(classifier.config.thresholds)
    return {
        **engine_report(classifier, test, test_scores),
        "test_within_source": per_source_metrics(test, test_scores, thresholds),
        "held_out_any_harm": harm_metrics(test, test_scores),
        "category_confusion": category_confusion(test, test_scores, thresholds),
        "realistic_clean": clean_report(clean, clean_scores, thresholds),
        "functional_suite": suite_report(cases, suite_scores, thresholds),
        "functional_suite_halves": suite_halves(cases, suite_scores, thresholds, near),
        "verdicts": [bool(flagged_labels(row, thresholds)) for row in scores],
    }


def cross_source(datasets_dir, within):
    """Leave-one-source-out probe rows, each with the served model's within-source test ROC AUC."""
    rows = leave_one_source_out(sample_examples(load_all(datasets_dir)))
    for row in rows:
        row["served_within_source_roc_auc"] = within.get(row["source"], {}).get(row["label"], {}).get("roc_auc")
    return rows


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


def _pct(value):
    return f"{100 * value:.1f}%"


def validation_lines(validation):
    """The calibrated validation split at the served thresholds: with the suite's development half, what
    chooses between trained models (model/calibrate.py)."""
    if not validation:
        return []
    lines = ["", "## Validation split (what chooses between trained models)", "",
             "Calibrated scores at the served thresholds (chosen on the clean development half): any label flags "
             f"{validation['any_label_recall']:.1%} of the {validation['harmful_texts']} texts with a known harmful "
             "label.", ""]
    return lines + _table(["label", "positives", "ROC AUC", "precision", "recall"],
                          [[label, e["support_positive"], e["roc_auc"], e["precision"], e["recall"]]
                           for label, e in validation["labels"].items()])


def render_markdown(report):
    results, default = report["engines"], report["default_engine"]
    names = list(results)
    served = results[default]
    first = served["test"]
    engines = ", ".join(f"`{n}` ({r['engine']} {r['precision']})" for n, r in results.items())
    lines = ["# Bundled model evaluation", "",
             f"Engines: {engines}; `{default}` is what the worker serves on CPU by default. Texts longer than "
             f"{served['max_length']} tokens are read in windows, as the worker reads them.", "",
             "## Held-out test split (pooled)", ""]
    lines += _table(["label", "threshold", "positives / negatives"]
                    + [f"{n} ROC AUC" for n in names] + [f"{default} precision", f"{default} recall",
                                                          f"{default} F1"],
                    [[label, first[label]["threshold"],
                      f"{first[label]['support_positive']} / {first[label]['support_negative']}"]
                     + [results[n]["test"][label].get("roc_auc", "-") for n in names]
                     + [first[label].get(k, "-") for k in ("precision", "recall", "f1")] for label in LABELS])
    lines += ["", "Precision and recall are at the served thresholds on the pooled split, whose mix of sources "
              "is nothing like ordinary traffic: read them with the realistic clean rates below.", "",
              "## Cross-source", "",
              "Within one source (positives and negatives from the same source, so knowing the source does not "
              "help): the served model's ROC AUC on the test split, and a leave-one-source-out probe (base "
              "encoder embeddings, logistic regression trained on every other source; model/cross_source.py).", ""]
    lines += _table(["label", "held-out source", "positives / negatives", "served, within source (test split)",
                     "leave-one-source-out probe"],
                    [[r["label"], r["source"], f"{r['positives']} / {r['negatives']}",
                      r["served_within_source_roc_auc"] or "-", r["probe_roc_auc"]]
                     for r in report.get("cross_source", [])]) if report.get("cross_source") else ["(not run)"]
    lines += validation_lines((report.get("calibration") or {}).get("validation"))
    clean = served["realistic_clean"]
    lines += ["", "## Realistic clean text (never trained on; model/clean_sets.py, test half)", "",
              "Share flagged at the served thresholds (pooled: each source weighs the same); budget per label "
              "in model/calibrate.py (PER_LABEL_BUDGETS), 8% for any label.", ""]
    lines += _table(["source", "texts", "any label"] + list(LABELS),
                    [[source, e["texts"], _pct(e["any_label"])] + [_pct(e[label]) for label in LABELS]
                     for source, e in clean.items() if source != "examples"])
    lines += ["", "Most confidently flagged clean texts:", ""]
    lines += [f"- [{e['source']}] flagged {', '.join(e['flagged'])}: \"{e['text']}\"" for e in clean["examples"]] \
        or ["- none"]
    lines += ["", "Any harm (highest label score against harmful / harmless, where the source says):", ""]
    harm = served["held_out_any_harm"]
    lines += _table(["source", "harmful / harmless"] + [f"{n} ROC AUC" for n in names],
                    [[source, f"{e['harmful']} / {e['harmless']}"]
                     + [results[n]["held_out_any_harm"][source]["roc_auc"] for n in names]
                     for source, e in harm.items()])
    check = report["parity"]
    largest = max(v for v in check["max_roc_auc_difference"].values() if v is not None)
    lines += ["", f"Parity: largest per-label ROC AUC difference {largest} "
              f"(tolerance {AUC_TOLERANCE}); flagged verdicts agree on {check['verdict_agreement']:.2%} of texts.", ""]
    halves = served["functional_suite_halves"]
    near = report.get("suite_near_duplicates", [])
    lines += ["## Functional suite (model/functional_suite.tsv)", "",
              "Split by template (identity terms masked) into a frozen test half, never used to choose data, "
              f"thresholds or training, and a development half. {len(near)} cases have a near-duplicate among the "
              "training examples (word edit similarity of templates >= 0.75, model/suite.py); the test half is "
              "also shown without them.", ""]
    for n in names:
        for half, s in results[n]["functional_suite_halves"].items():
            lines.append(f"- `{n}` {half}: {s['cases']} cases, accuracy **{s['accuracy']}**, harmful caught "
                         f"{s['harmful_cases_caught']}, harmless cleared {s['harmless_cases_cleared']}, lowest trap "
                         f"group {s['trap_group_min']}")
    lines.append("")
    groups = sorted(set(halves["test"]["by_functionality"]) | set(halves["dev"]["by_functionality"]))

    def cell(name, half, group, key):
        entry = results[name]["functional_suite_halves"][half]["by_functionality"].get(group)
        return entry[key] if entry else "-"

    lines += _table(["functionality", "test cases"] + [f"{n} test accuracy" for n in names]
                    + ["dev cases", f"{default} dev accuracy"],
                    [[group, cell(default, "test", group, "cases")]
                     + [cell(n, "test", group, "accuracy") for n in names]
                     + [cell(default, "dev", group, "cases"), cell(default, "dev", group, "accuracy")]
                     for group in groups])
    lines += ["", f"Failures in the frozen test half (`{default}`):", ""]
    lines += [f"- [{f['functionality']}] \"{f['text']}\": expected {', '.join(f['expected']) or 'none'}, "
              f"flagged {', '.join(f['flagged']) or 'none'}" for f in halves["test"]["failures"]] or ["- none"]
    lines += ["", "Near-duplicates of training examples:", ""]
    lines += [f"- ({d['half']}) \"{d['case']}\" ~ \"{d['training_example']}\"" for d in near] or ["- none"]
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
    splits = load_splits(args.datasets_dir)
    test, cases = splits["test"][:args.limit], load_suite()
    clean = load_clean_sets(args.datasets_dir, splits)["test"][:args.limit]
    near = near_duplicates([c["text"] for c in cases], [e.text for e in written_examples()])
    results = {engine_name(*pair): evaluate(load_engine(model_path, *pair, threads=args.threads), test, cases,
                                            clean, near) for pair in RECORDED_ENGINES}
    default = engine_name(*RECORDED_ENGINES[-1])
    with open(os.path.join(args.artifact, "model.json")) as f:
        calibration = json.load(f).get("calibration")
    report = {"weights_sha256": sha256_of(os.path.join(args.artifact, "weights.safetensors")),
              "default_engine": default, "engines": results, "parity": parity(results),
              "calibration": calibration,
              "cross_source": [] if args.limit else cross_source(args.datasets_dir,
                                                                 results[default]["test_within_source"]),
              "suite_near_duplicates": [{"case": case, "training_example": example, "half": suite_half(case)}
                                        for case, example in near.items()]}
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
