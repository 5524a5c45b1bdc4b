"""Spelling obfuscation for training (model/obfuscate.py): seeded, label-preserving, on every kind of text."""

import random

from model.data import make_example
from model.obfuscate import augment, delete_char, insert_char, leetspeak, obfuscate, space_out, swap_chars


def test_each_edit_changes_the_word_and_keeps_its_first_letter():
    rng = random.Random(0)
    for edit in (leetspeak, delete_char, swap_chars, insert_char, space_out):
        for word in ("idiot", "muslims", "weather"):
            changed = edit(word, rng)
            assert changed != word, (edit.__name__, word)
            assert changed[0] in (word[0], "1", "!", "0", "4", "@", "3", "5", "$", "7", "9", "8")
    assert leetspeak("kill", random.Random(1)) != "kill"
    assert space_out("idiot", random.Random(3)).replace(" ", "") == "idiot"


def test_obfuscate_is_seeded_and_only_touches_words():
    text = "you are a worthless idiot, go away!"
    first = [obfuscate(text, random.Random(7)) for _ in range(2)]
    assert first[0] == first[1]
    outputs = {obfuscate(text, random.Random(seed)) for seed in range(30)}
    assert text not in outputs or len(outputs) > 20
    assert all(out.endswith("!") and "," in out for out in outputs)
    assert obfuscate("ok :)", random.Random(0)) == "ok :)"  # nothing of three letters to respell


def test_augment_copies_harmful_and_harmless_examples_with_their_labels():
    examples = [make_example(f"example number {i} says you are an idiot", "extra", "extra-flagged",
                             (0, 1, 0, 0, 0), (1,) * 5) for i in range(200)]
    examples += [make_example(f"example number {i} about the weather today", "extra", "extra-clean",
                              (0,) * 5, (1,) * 5) for i in range(200)]
    augmented = augment(examples, seed=13, share=0.2)
    copies = augmented[len(examples):]
    assert augmented[:len(examples)] == examples
    assert 40 < len(copies) < 120
    assert {c.bucket for c in copies} == {"extra-flagged", "extra-clean"}
    originals = {e.bucket: e for e in examples}
    for copy in copies:
        assert copy.text not in {e.text for e in examples}
        assert copy.labels == originals[copy.bucket].labels and copy.mask == originals[copy.bucket].mask
    assert augment(examples, seed=13, share=0.2) == augmented
