"""model/suite.py and model/clean_sets.py: the functional suite's halves, near-duplicates, the clean set."""

from __future__ import annotations

from model.clean_sets import EVERYDAY_CLEAN_PATH, hashed_half
from model.data import read_tsv, written_examples
from model.eval_report import load_suite
from model.suite import frozen_test_cases, near_duplicates, suite_half, template


def test_identity_terms_are_masked_so_variants_share_a_template_and_a_half():
    assert template("Muslims are vermin!") == template("women are vermin") == "<id> are vermin"
    for group in ("jews", "immigrants", "gay people", "women", "trans people"):
        assert suite_half(f"{group} are vermin") == suite_half("muslims are vermin") or group.endswith("people")


def test_the_suite_has_a_frozen_test_half_and_a_dev_half_covering_every_case():
    cases = load_suite()
    halves = {case["half"] for case in cases}
    assert halves == {"test", "dev"}
    frozen = [case for case in cases if case["half"] == "test"]
    assert 0.35 * len(cases) <= len(frozen) <= 0.65 * len(cases)
    assert sorted(frozen_test_cases()) == sorted(case["text"] for case in frozen)
    for label_set in ({"hate"}, set()):  # harmful and harmless cases in both halves
        for half in ("test", "dev"):
            assert any(case["half"] == half and bool(any(case["labels"])) == bool(label_set) for case in cases)


def test_near_duplicates_are_found_past_a_swapped_phrase_and_identity_term():
    corpus = ["calling autistic people robots is cruel and wrong", "the weather is lovely today"]
    found = near_duplicates(["calling trans people mentally ill is cruel and wrong", "I adopted a kitten"], corpus)
    assert found == {"calling trans people mentally ill is cruel and wrong": corpus[0]}


def test_training_examples_leave_out_near_duplicates_of_the_frozen_half():
    from model.data import frozen_suite_near_duplicates

    extra = written_examples()
    dropped = frozen_suite_near_duplicates(extra)
    assert dropped and len(dropped) < 20
    assert not near_duplicates(frozen_test_cases(), [e.text for e in extra if e.text not in dropped])


def test_everyday_clean_text_has_both_halves_and_never_overlaps_training():
    texts = [row["text"] for row in read_tsv(EVERYDAY_CLEAN_PATH)]
    assert len(texts) >= 100
    assert {hashed_half(text) for text in texts} == {"dev", "test"}
    assert not near_duplicates(texts, [e.text for e in written_examples()])
