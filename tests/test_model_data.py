"""The training data mapping and the functional suite: what the bundled model is taught and judged on."""

import csv
import os

import pytest

from model.data import (
    BUCKET_SHARES,
    LABELS,
    UNKNOWN_HARM,
    dedup_key,
    load_davidson,
    load_extra_examples,
    load_toxic_spans,
    read_tsv,
    written_examples,
)
from model.eval_report import case_passes, load_suite

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS_DIR = os.environ.get("DATASETS_DIR", os.path.join(PROJECT_ROOT, "..", "shared", "datasets"))
HARASSMENT, HATE, VIOLENCE = (LABELS.index(name) for name in ("harassment", "hate", "violence"))


def test_functional_suite_has_300_cases_over_all_labels_and_traps():
    cases = load_suite()
    assert len(cases) >= 300
    for j, label in enumerate(LABELS):
        assert sum(case["labels"][j] for case in cases) >= 12, label
    traps = {case["functionality"] for case in cases if case["functionality"].startswith("trap-")}
    assert {"trap-profanity-untargeted", "trap-counter-speech", "trap-negation",
            "trap-violence-idiom-sports-games", "trap-self-harm-help-and-discussion",
            "trap-sexual-education-medical", "trap-reclaimed-and-identity"} <= traps
    for case in cases:  # trap groups hold harmless texts only
        assert case["functionality"].startswith("trap-") == (not any(case["labels"])), case


def test_functional_suite_never_overlaps_the_project_training_examples():
    suite = {dedup_key(case["text"]) for case in load_suite()}
    training = [dedup_key(example.text) for example in written_examples()]
    assert len(training) >= 700
    assert suite.isdisjoint(training), sorted(suite & set(training))


@pytest.mark.skipif(not os.path.isdir(DATASETS_DIR), reason="shared datasets not available")
def test_functional_suite_never_overlaps_the_public_training_data(monkeypatch):
    from model import data

    monkeypatch.setattr(data, "functional_suite_keys", lambda path=None: set())
    everything = {dedup_key(example.text) for example in data.load_all(DATASETS_DIR)}
    suite = {dedup_key(case["text"]) for case in load_suite()}
    assert suite.isdisjoint(everything), sorted(suite & everything)


def test_a_case_passes_on_an_expected_label_or_on_silence():
    hate_violence = tuple(int(label in ("hate", "violence")) for label in LABELS)
    assert case_passes(hate_violence, ["violence"])
    assert not case_passes(hate_violence, ["sexual"])
    assert not case_passes(hate_violence, [])
    assert case_passes((0,) * len(LABELS), [])
    assert not case_passes((0,) * len(LABELS), ["harassment"])


def test_extra_examples_use_only_known_labels(tmp_path):
    path = tmp_path / "extra.tsv"
    path.write_text("text\tlabels\nyou are vile\tharassment,insult\n")
    with pytest.raises(ValueError, match="insult"):
        load_extra_examples(str(path))
    path.write_text("text\tlabels\nno tab here\n")
    with pytest.raises(ValueError, match="tab-separated"):
        list(read_tsv(str(path)))


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_davidson_offensive_is_not_taught_as_harassment(tmp_path):
    _write_csv(tmp_path / "davidson-2017" / "labeled_data.csv",
               ["", "count", "hate_speech", "offensive_language", "neither", "class", "tweet"],
               [[0, 3, 0, 3, 0, 1, "RT @x: this shit is wild &amp; fun"],
                [1, 3, 2, 1, 0, 0, "some hateful tweet"],
                [2, 3, 0, 0, 3, 2, "nice day"]])
    offensive, hateful, neither = load_davidson(str(tmp_path))
    assert offensive.text == "this shit is wild & fun"
    assert offensive.labels == (0,) * len(LABELS) and offensive.mask[HARASSMENT] == 0
    assert offensive.mask[HATE] == 1
    assert hateful.labels[HATE] == 1 and hateful.targets[HATE] == pytest.approx(2 / 3)
    assert neither.mask == (1,) * len(LABELS) and neither.harmful == 0


def test_toxic_spans_map_span_types_to_labels_and_profanity_to_none(tmp_path):
    folder = tmp_path / "toxic-spans-2022"
    _write_csv(folder / "comments.csv", ["comment_id", "comment_text"],
               [[1, "you idiot"], [2, "damn this"], [3, "I will hurt you"], [4, "nice article"]])
    annotations, spans = [], []
    for comment, kinds in ((1, ["Insult", "Insult", ""]), (2, ["Profane/Obscene"] * 3),
                           (3, ["Threat", "Threat", "Insult"]), (4, ["", "", ""])):
        for kind in kinds:
            annotation = len(annotations)
            annotations.append([annotation, comment, annotation, "USA", False, not kind])
            if kind:
                spans.append([annotation, kind, 0, 3])
    _write_csv(folder / "annotations.csv",
               ["annotation", "comment_id", "worker", "country", "all toxic", "not toxic"], annotations)
    _write_csv(folder / "spans.csv", ["annotation", "type", "start", "end"], spans)
    insult, profane, threat, untyped = load_toxic_spans(str(tmp_path))
    assert insult.labels[HARASSMENT] == 1 and insult.targets[HARASSMENT] == pytest.approx(2 / 3)
    assert profane.labels == (0,) * len(LABELS) and profane.mask[HARASSMENT] == 1
    assert profane.bucket == "spans-profane"
    assert threat.labels[VIOLENCE] == 1 and threat.labels[HARASSMENT] == 0
    # No span from anyone, "not toxic" ticked: still not clean, the flag is set on toxic comments as well.
    assert untyped.bucket == "spans-untyped" and untyped.harmful == UNKNOWN_HARM
    assert untyped.mask[HATE] == untyped.mask[HARASSMENT] == untyped.mask[VIOLENCE] == 0
    assert BUCKET_SHARES["spans-untyped"] == 0
