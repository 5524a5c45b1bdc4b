"""The templated weak-spot examples (model/weak_spots.py): committed as generated, train-only, no suite look-alikes."""

import os

import pytest

from model.data import LABELS, load_generated_examples, load_splits, read_tsv
from model.suite import near_duplicates
from model.weak_spots import OUTPUT_PATH, TOPICS, generate
from tests.test_model_data import DATASETS_DIR


def test_committed_file_is_what_the_script_generates():
    committed = [(row["text"], row["labels"], row["topic"]) for row in read_tsv(OUTPUT_PATH)]
    assert committed == generate()


def test_every_topic_has_harmful_and_harmless_examples():
    examples = load_generated_examples()
    buckets = {e.bucket for e in examples}
    assert buckets == {f"generated-{topic}-{verdict}" for topic in TOPICS for verdict in ("flagged", "clean")}
    hate, harassment = LABELS.index("hate"), LABELS.index("harassment")
    insults = [e for e in examples if e.bucket == "generated-insult-flagged"]
    assert {e.labels[hate] for e in insults} == {0, 1}  # abuse at a group is hate, at a person harassment
    assert all(e.labels[harassment] != e.labels[hate] for e in insults)


def test_no_example_is_a_near_duplicate_of_a_functional_suite_case():
    from model.data import FUNCTIONAL_SUITE_PATH

    suite = [row["text"] for row in read_tsv(FUNCTIONAL_SUITE_PATH)]
    assert not near_duplicates(suite, [e.text for e in load_generated_examples()])


@pytest.mark.skipif(not os.path.isdir(DATASETS_DIR), reason="shared datasets not available")
def test_weak_spot_examples_are_opt_in_and_train_only():
    default = load_splits(DATASETS_DIR)
    with_weak_spots = load_splits(DATASETS_DIR, weak_spots=True)
    assert not any(e.source == "generated" for split in default.values() for e in split)
    assert {name for name, split in with_weak_spots.items() if any(e.source == "generated" for e in split)} == {"train"}
    # The held-out splits barely change with the option: only texts that a generated one de-duplicates.
    for name in ("val", "test"):
        kept, held_out = {e.text for e in with_weak_spots[name]}, {e.text for e in default[name]}
        assert kept <= held_out and len(held_out - kept) <= 5, name
