"""The training entry point (`python -m model.train DATASETS_DIR ...`) runs end to end and writes a complete
artifact, on a small made-up sample in the dataset formats model/data.py reads. The sample is written by
the test, so training is covered on any machine (the real data in ../shared/datasets is never needed).

The sample, in the layout of ../shared/datasets:
- davidson-2017/labeled_data.csv: the Davidson et al. CSV (count, hate_speech, offensive_language,
  neither, class, tweet);
- toxigen-prompts/{hate,neutral}_<group>_1k.txt: ToxiGen prompt lines, "- statement\\n- statement".
"""

import csv
import itertools
import json
import os
import subprocess
import sys

from model.checks import REQUIRED_CHECKS
from model.data import LABELS

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBJECTS = ["my neighbour", "the new teacher", "that team", "the people next door", "our mayor", "this group"]
NEUTRAL = ["cooks great food", "likes the weather today", "has a new puppy", "plays chess on sundays"]
HOSTILE = ["is a worthless idiot", "should be wiped out", "are vermin who ruin everything", "deserves a beating"]


def sentences(predicates: list[str], tag: str) -> list[str]:
    return [f"{subject} {predicate} {tag}{n}" for n, (subject, predicate)
            in enumerate(itertools.product(SUBJECTS, predicates))]


def write_sample_datasets(root) -> None:
    davidson = root / "davidson-2017"
    davidson.mkdir(parents=True)
    with open(davidson / "labeled_data.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["", "count", "hate_speech", "offensive_language", "neither", "class", "tweet"])
        rows = ([(3, 0, 0, 2, text) for text in sentences(NEUTRAL, "n")]
                + [(1, 2, 0, 1, f"RT @someone: {text}") for text in sentences(HOSTILE, "o")]
                + [(2, 1, 0, 0, f"{text} http://t.co/x") for text in sentences(HOSTILE, "h")])
        for index, (hate, offensive, neither, klass, text) in enumerate(rows):
            writer.writerow([index, hate + offensive + neither, hate, offensive, neither, klass, text])
    toxigen = root / "toxigen-prompts"
    toxigen.mkdir()
    for kind, predicates in (("hate", HOSTILE), ("neutral", NEUTRAL)):
        statements = sentences(predicates, f"t{kind}")
        lines = ["\\n".join(f"- {s}" for s in statements[i:i + 4]) + "\\n-" for i in range(0, len(statements), 4)]
        (toxigen / f"{kind}_sample_1k.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spans = root / "toxic-spans-2022"  # three annotators per comment; insult spans on the hostile ones
    spans.mkdir()
    comments = sentences(NEUTRAL, "s") + sentences(HOSTILE, "i")
    with open(spans / "comments.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("comment_id", "comment_text"), *enumerate(comments)])
    with open(spans / "annotations.csv", "w", newline="", encoding="utf-8") as f, \
            open(spans / "spans.csv", "w", newline="", encoding="utf-8") as g:
        annotations, marks = csv.writer(f), csv.writer(g)
        annotations.writerow(["annotation", "comment_id", "worker", "country", "all toxic", "not toxic"])
        marks.writerow(["annotation", "type", "start", "end"])
        for comment_id, text in enumerate(comments):
            hostile = comment_id >= len(comments) // 2
            for worker in range(3):
                annotation = comment_id * 3 + worker
                annotations.writerow([annotation, comment_id, worker, "USA", "False", str(not hostile)])
                if hostile:
                    marks.writerow([annotation, "Insult", 0, len(text)])
    ailuminate = root / "ailuminate-demo-2024"
    ailuminate.mkdir()
    with open(ailuminate / "prompts.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["release_prompt_id", "prompt_text", "hazard", "persona", "locale", "prompt_hash"])
        for n, (hazard, text) in enumerate([("ssh", "how do I hurt myself without anyone noticing"),
                                            ("sxc_prn", "write an explicit sex scene between two adults"),
                                            ("dfm", "what should I say to a rude coworker")] * 4):
            writer.writerow([f"p{n}", f"{text} {n}", hazard, "normal", "en_US", f"h{n}"])
    surge = root / "surge-toxicity-2021"
    surge.mkdir()
    with open(surge / "toxicity_en.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "is_toxic"])
        writer.writerows([(f"{text} surge", "Not Toxic") for text in sentences(NEUTRAL, "u")][:8]
                         + [(f"{text} surge", "Toxic") for text in sentences(HOSTILE, "u")][:8])


def test_training_smoke_run_writes_weights_and_metrics(tmp_path):
    datasets = tmp_path / "datasets"
    write_sample_datasets(datasets)
    output = tmp_path / "artifact"
    result = subprocess.run(
        [sys.executable, "-m", "model.train", str(datasets), "--limit", "48", "--epochs", "1",
         "--max-steps", "2", "--batch-size", "8", "--threads", "1", "--output", str(output)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(output)
    for name in ("weights.safetensors", "model.json", "metrics.json", "SHA256SUMS"):
        assert (output / name).is_file(), name
    metrics = json.loads((output / "metrics.json").read_text())
    assert all(size > 0 for size in metrics["split_sizes"].values()), metrics["split_sizes"]
    assert set(metrics["thresholds"]) == set(LABELS)
    assert set(metrics["fp16"]["test"]) == set(LABELS)
    assert metrics["fp16"]["required_checks"]["total"] == len(REQUIRED_CHECKS)
    assert metrics["training"]["steps"] == 2
    assert json.loads((output / "model.json").read_text())["labels"] == list(LABELS)
