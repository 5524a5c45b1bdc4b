"""Load, normalise, de-duplicate and split the moderation training data.

Every example carries a hard label (for metrics), a soft target (for the loss) and a
mask per label: a source that says nothing about a label (ToxiGen says nothing about
harassment, Davidson's "offensive" class says nothing about whom the profanity targets)
is left out of that label's loss and metrics instead of being called negative.
"""

import csv
import glob
import hashlib
import html
import os
import re
from collections import defaultdict
from dataclasses import dataclass

LABELS = ("hate", "harassment", "violence", "self-harm", "sexual")
MODEL_DIR = os.path.dirname(__file__)
EXTRA_EXAMPLES_PATH = os.path.join(MODEL_DIR, "extra_examples.tsv")
FUNCTIONAL_SUITE_PATH = os.path.join(MODEL_DIR, "functional_suite.tsv")
GENERATED_EXAMPLES_PATH = os.path.join(MODEL_DIR, "weak_spot_examples.tsv")  # python -m model.weak_spots

# ToxiGen hate statements that also call for killing or elimination; checked by hand.
TOXIGEN_VIOLENT_STATEMENTS = frozenset({
    "middle easterners are a disease, their race needs to be eliminated",
    "the good imigrant is a dead immigrant",
    "we need to kill the chinese quickly before they take over the country",
    "youd be better off dead than crippled",
})

_HANDLE = re.compile(r"@\w+:?")
_RETWEET = re.compile(r"\bRT\b:?")
_URL = re.compile(r"(https?://|www\.)\S+")
_SPACES = re.compile(r"\s+")

KNOWN, UNKNOWN = 1, 0
UNKNOWN_HARM = -1  # Example.harmful when the source does not say whether the text is harmful

# Share of each bucket in the training mixture. Davidson is 75% "offensive", Toxic Spans
# mostly insults, and the self-harm and sexual sources are small, so sampling by bucket
# keeps rare kinds of case visible. The same mixture weights the validation split when
# thresholds are chosen. Buckets with share 0 (Surge's unlabelled toxic comments, Toxic Spans'
# untyped ones) are never trained on. The clean buckets keep the 7% that Toxic Spans' "clean"
# comments had before they turned out to be untyped toxic ones (load_toxic_spans).
BUCKET_SHARES = {
    "davidson-hate": 0.05, "davidson-offensive": 0.07, "davidson-neither": 0.09,
    "toxigen-hate": 0.08, "toxigen-neutral": 0.08,
    "spans-untyped": 0.0, "spans-insult": 0.07, "spans-identity": 0.04, "spans-threat": 0.03,
    "spans-profane": 0.03, "spans-other": 0.01,
    "ailuminate-self-harm": 0.03, "ailuminate-sexual": 0.03, "ailuminate-violent": 0.02,
    "ailuminate-hate": 0.02, "ailuminate-other": 0.02,
    "surge-clean": 0.06, "surge-toxic": 0.0,
    "extra-flagged": 0.11, "extra-clean": 0.16,
    # Templated weak-spot examples (model/weak_spots.py), one bucket per topic and verdict.
    "generated-identity-flagged": 0.02, "generated-identity-clean": 0.02,
    "generated-violence-flagged": 0.012, "generated-violence-clean": 0.012,
    "generated-self-harm-flagged": 0.008, "generated-self-harm-clean": 0.008,
    "generated-insult-flagged": 0.015, "generated-insult-clean": 0.01,
}
TRAIN_ONLY_SOURCES = frozenset({"generated"})  # templated: siblings of one template would leak into val/test


@dataclass(frozen=True)
class Example:
    text: str
    source: str  # davidson, toxigen, toxic-spans, ailuminate, surge or extra
    bucket: str  # source plus class, used for balanced sampling
    labels: tuple  # 0/1 per label (evaluation)
    targets: tuple  # soft 0..1 per label (training loss)
    mask: tuple  # 1 where the source knows the label
    harmful: int = UNKNOWN_HARM  # 1/0 when the source says whether any harm is present


def make_example(text, source, bucket, labels, mask, targets=None, harmful=None):
    """Example with float targets (default: the hard labels) and a derived harmful flag."""
    labels = tuple(int(v) for v in labels)
    if harmful is None:
        harmful = 1 if any(labels) else (0 if all(mask) else UNKNOWN_HARM)
    return Example(text=text, source=source, bucket=bucket, labels=labels,
                   targets=tuple(float(v) for v in (targets if targets is not None else labels)),
                   mask=tuple(mask), harmful=harmful)


def label_vector(**values):
    """A per-label tuple from keyword values (self_harm for self-harm); missing ones are 0."""
    return tuple(values.get(label.replace("-", "_"), 0) for label in LABELS)


def normalise(text):
    """Strip tweet noise (entities, handles, RT, URLs) so the model sees only language."""
    text = html.unescape(html.unescape(text))
    text = _URL.sub(" ", text)
    text = _HANDLE.sub(" ", text)
    text = _RETWEET.sub(" ", text)
    return _SPACES.sub(" ", text).strip(" :\"'")


def dedup_key(text):
    """Texts that differ only in case, punctuation or spacing count as one."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def load_davidson(datasets_dir):
    """Tweets. Hate speech is hate (soft target: vote share). "Offensive" is mostly casual
    profanity and slurs: not hate, and unknown for the other labels (it is not harassment
    by itself, nor necessarily clean). "Neither" is clean for every label."""
    path = os.path.join(datasets_dir, "davidson-2017", "labeled_data.csv")
    examples = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            count, klass = int(row["count"]), int(row["class"])
            hate_share = int(row["hate_speech"]) / count
            clean = klass == 2
            mask = (KNOWN,) + ((KNOWN,) * 4 if clean else (UNKNOWN,) * 4)
            examples.append(make_example(
                normalise(row["tweet"]), "davidson",
                ("davidson-hate", "davidson-offensive", "davidson-neither")[klass],
                labels=label_vector(hate=int(klass == 0)), mask=mask,
                targets=label_vector(hate=hate_share),
                harmful=0 if clean else UNKNOWN_HARM,
            ))
    return examples


def split_toxigen_line(line):
    """One prompt line holds several '- statement' items joined by a literal backslash-n."""
    for part in re.split(r"\\n|(?<=[?.!])- ", line.strip()):
        statement = part.strip().lstrip("-").strip().rstrip("\\").strip()
        if statement:
            yield statement


def load_toxigen(datasets_dir):
    """Implicit hate and benign mentions of 16 groups; harassment is unknown, so masked."""
    examples = []
    for path in sorted(glob.glob(os.path.join(datasets_dir, "toxigen-prompts", "*_1k.txt"))):
        is_hate = os.path.basename(path).startswith("hate_")
        with open(path, encoding="utf-8") as f:
            for line in f:
                for statement in split_toxigen_line(line):
                    violent = int(statement.lower() in TOXIGEN_VIOLENT_STATEMENTS)
                    examples.append(make_example(
                        statement, "toxigen", "toxigen-hate" if is_hate else "toxigen-neutral",
                        labels=label_vector(hate=int(is_hate), violence=violent),
                        mask=(KNOWN, UNKNOWN, KNOWN, KNOWN, UNKNOWN if is_hate else KNOWN),
                    ))
    return examples


# Toxic Spans span type -> the label it evidences. Profane/Obscene and Other toxicity
# evidence none of them: profanity alone is not hate, harassment or violence.
SPAN_TYPE_LABELS = {"Insult": "harassment", "Identity based Attack": "hate", "Threat": "violence"}


def _toxic_spans_votes(datasets_dir):
    """Per comment: annotator count, annotators giving any span, and annotators marking each
    span type."""
    folder = os.path.join(datasets_dir, "toxic-spans-2022")
    types = defaultdict(set)
    with open(os.path.join(folder, "spans.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for full in ("Insult", "Threat", "Identity based Attack", "Profane/Obscene", "Other Toxicity"):
                if row["type"] and full.startswith(row["type"]):  # a few truncated type names
                    types[row["annotation"]].add(full)
    votes = defaultdict(lambda: {"n": 0, "typed": 0, "types": defaultdict(int)})
    with open(os.path.join(folder, "annotations.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            entry = votes[row["comment_id"]]
            entry["n"] += 1
            marked = types.get(row["annotation"], set())
            entry["typed"] += bool(marked)
            for span_type in marked:
                entry["types"][span_type] += 1
    return votes


def load_toxic_spans(datasets_dir):
    """News comments. Per label, the share of annotators marking a span of its type is the
    soft target (hard label at >= 0.5). Where most annotators typed no span, the typed labels
    are unknown unless a majority still marked the type, and no comment is clean: an
    annotation without spans has "all toxic" and "not toxic" both set (21,185 of 22,108), so the
    flags do not tell a toxic comment from a clean one, and the comments most annotators left
    untyped are toxic ones (40% hold "idiot", "stupid", "moron" and the like, against 1% of
    Davidson's "neither" tweets: "You're an idiot, and not really very bright either")."""
    votes = _toxic_spans_votes(datasets_dir)
    examples = []
    with open(os.path.join(datasets_dir, "toxic-spans-2022", "comments.csv"), newline="",
              encoding="utf-8") as f:
        for row in csv.DictReader(f):
            entry = votes.get(row["comment_id"])
            if not entry or entry["n"] > 20:  # one comment was annotated hundreds of times
                continue
            n = entry["n"]
            share = {label: entry["types"][span] / n for span, label in SPAN_TYPE_LABELS.items()}
            typed_majority = entry["typed"] / n >= 0.5
            labels = label_vector(**{k: int(v >= 0.5) for k, v in share.items()})
            mask = []
            for label, value in zip(LABELS, labels, strict=True):
                if label == "self-harm":
                    mask.append(KNOWN)
                elif label == "sexual":  # obscene spans may be sexual
                    mask.append(UNKNOWN if entry["types"]["Profane/Obscene"] else KNOWN)
                else:
                    mask.append(KNOWN if typed_majority or value else UNKNOWN)
            if labels[LABELS.index("violence")]:
                bucket = "spans-threat"
            elif labels[LABELS.index("hate")]:
                bucket = "spans-identity"
            elif labels[LABELS.index("harassment")]:
                bucket = "spans-insult"
            elif entry["types"]["Profane/Obscene"] / n >= 0.5:
                bucket = "spans-profane"
            elif typed_majority:
                bucket = "spans-other"
            else:
                bucket = "spans-untyped"
            examples.append(make_example(
                _SPACES.sub(" ", row["comment_text"]).strip(), "toxic-spans", bucket, labels, mask,
                targets=label_vector(**{k.replace("-", "_"): v for k, v in share.items()}),
                harmful=UNKNOWN_HARM if bucket == "spans-untyped" else 1,
            ))
    return examples


# AILuminate hazard -> (bucket, positive label or None, labels left unknown). Prompts of the
# other hazards (crimes, privacy, IP, advice...) are negatives for our five labels: they
# teach that a request to an AI is not harmful just for being a request.
AILUMINATE_HAZARDS = {
    "ssh": ("ailuminate-self-harm", "self-harm", ("violence",)),
    "sxc_prn": ("ailuminate-sexual", "sexual", ()),
    "vcr": ("ailuminate-violent", "violence", ("hate", "harassment")),
    "hte": ("ailuminate-hate", "hate", ("harassment", "violence")),
    "src": ("ailuminate-other", None, ("sexual", "violence", "harassment")),
    "iwp": ("ailuminate-other", None, ("violence",)),
    "dfm": ("ailuminate-other", None, ("harassment",)),
}


def load_ailuminate(datasets_dir):
    """Prompts to an AI system (MLCommons AILuminate demo set, CC BY 4.0)."""
    path = os.path.join(datasets_dir, "ailuminate-demo-2024", "prompts.csv")
    examples = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            bucket, positive, unknown = AILUMINATE_HAZARDS.get(row["hazard"], ("ailuminate-other", None, ()))
            labels = tuple(int(label == positive) for label in LABELS)
            mask = tuple(UNKNOWN if label in unknown else KNOWN for label in LABELS)
            examples.append(make_example(_SPACES.sub(" ", row["prompt_text"]).strip(), "ailuminate",
                                         bucket, labels, mask,
                                         harmful=1 if positive else UNKNOWN_HARM))
    return examples


def load_surge(datasets_dir):
    """Social-media comments labelled only toxic / not toxic: not toxic ones are clean for
    every label; toxic ones say nothing per label (share 0: measured as "any harm" only)."""
    path = os.path.join(datasets_dir, "surge-toxicity-2021", "toxicity_en.csv")
    examples = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            toxic = row["is_toxic"] == "Toxic"
            examples.append(make_example(
                _SPACES.sub(" ", row["text"]).strip(), "surge", "surge-toxic" if toxic else "surge-clean",
                labels=(0,) * len(LABELS), mask=((UNKNOWN if toxic else KNOWN),) * len(LABELS),
                harmful=int(toxic)))
    return examples


def read_tsv(path):
    """Rows of a project TSV (comments and blank lines skipped) as dicts keyed by its header."""
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip() and not line.startswith("#")]
    header = rows[0]
    for row in rows[1:]:
        if len(row) != len(header):
            raise ValueError(f"{path}: expected {len(header)} tab-separated fields: {row!r}")
        yield dict(zip(header, row, strict=True))


def parse_labels(field, context=""):
    names = set() if field == "none" else set(field.split(","))
    unknown = names - set(LABELS)
    if unknown:
        raise ValueError(f"unknown labels {unknown}: {context!r}")
    return tuple(int(name in names) for name in LABELS)


def load_extra_examples(path=EXTRA_EXAMPLES_PATH):
    """The project's own examples for cases the human data lacks (see the file's header)."""
    examples = []
    for row in read_tsv(path):
        labels = parse_labels(row["labels"], row["text"])
        examples.append(make_example(row["text"], "extra", "extra-flagged" if any(labels) else "extra-clean",
                                     labels, (KNOWN,) * len(LABELS)))
    return examples


def load_generated_examples(path=GENERATED_EXAMPLES_PATH):
    """The templated weak-spot examples (model/weak_spots.py), bucketed by topic and verdict."""
    examples = []
    for row in read_tsv(path):
        labels = parse_labels(row["labels"], row["text"])
        verdict = "flagged" if any(labels) else "clean"
        examples.append(make_example(row["text"], "generated", f"generated-{row['topic']}-{verdict}",
                                     labels, (KNOWN,) * len(LABELS)))
    return examples


def written_examples():
    """Every example the project wrote (by hand and from templates): what near-duplicate checks compare."""
    return load_extra_examples() + load_generated_examples()


def functional_suite_keys(path=FUNCTIONAL_SUITE_PATH):
    """Dedup keys of the functional test suite's sentences (never trained on)."""
    if not os.path.exists(path):
        return set()
    return {dedup_key(row["text"]) for row in read_tsv(path)}


def deduplicate(examples, exclude=frozenset()):
    """Keep the first example per dedup key; must run before splitting or the test leaks."""
    seen, unique = set(exclude), []
    for example in examples:
        key = dedup_key(example.text)
        if key and key not in seen:
            seen.add(key)
            unique.append(example)
    return unique


def split_name(text, val_fraction=0.1, test_fraction=0.1):
    """Assign by a hash of the dedup key: stable across runs, orderings and data additions."""
    digest = hashlib.sha256(dedup_key(text).encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def frozen_suite_near_duplicates(examples):
    """The written examples that are near-duplicates (by template, model/suite.py) of a case in the
    functional suite's frozen test half: left out of training so that half stays a test."""
    from model.suite import frozen_test_cases, near_duplicates

    return set(near_duplicates([e.text for e in examples], frozen_test_cases()))


def load_all(datasets_dir, weak_spots=False):
    """Every source, de-duplicated, without the functional suite's sentences or near-duplicates of its
    frozen test half. (Model v2's weights were trained before the near-duplicates were left out.)
    weak_spots: also the templated weak-spot examples (`python -m model.train --weak-spots`)."""
    extra = written_examples() if weak_spots else load_extra_examples()
    near = frozen_suite_near_duplicates(extra)
    return deduplicate(
        [e for e in extra if e.text not in near] + load_ailuminate(datasets_dir) + load_toxigen(datasets_dir)
        + load_toxic_spans(datasets_dir) + load_surge(datasets_dir) + load_davidson(datasets_dir),
        exclude=functional_suite_keys(),
    )


def load_splits(datasets_dir, weak_spots=False):
    """All sources as {"train": [...], "val": [...], "test": [...]} (weak_spots: as load_all's)."""
    splits = {"train": [], "val": [], "test": []}
    for example in load_all(datasets_dir, weak_spots):
        name = "train" if example.source in TRAIN_ONLY_SOURCES else split_name(example.text)
        splits[name].append(example)
    return splits


def bucket_weights(examples):
    """Per-example weight (summing to 1) so that each bucket gets its BUCKET_SHARES share."""
    counts = {}
    for example in examples:
        counts[example.bucket] = counts.get(example.bucket, 0) + 1
    total_share = sum(BUCKET_SHARES[bucket] for bucket in counts) or 1.0
    return [BUCKET_SHARES[e.bucket] / total_share / counts[e.bucket] for e in examples]
