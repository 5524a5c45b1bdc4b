"""Load, normalise, de-duplicate and split the moderation training data.

Every example carries a hard label (for metrics), a soft target (for the loss) and a
mask per label: a source that says nothing about a label (ToxiGen says nothing about
harassment) is left out of that label's loss and metrics instead of being called negative.
"""

import csv
import glob
import hashlib
import html
import os
import re
from dataclasses import dataclass

LABELS = ("hate", "harassment", "violence")
EXTRA_EXAMPLES_PATH = os.path.join(os.path.dirname(__file__), "extra_examples.tsv")

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


# Share of each bucket in the training mixture. Davidson is 75% "offensive" and ToxiGen and
# the extra examples are small, so sampling by bucket keeps rare kinds of case visible. The
# same mixture weights the validation split when thresholds are chosen.
BUCKET_SHARES = {
    "davidson-hate": 0.16, "davidson-offensive": 0.30, "davidson-neither": 0.26,
    "toxigen-hate": 0.10, "toxigen-neutral": 0.10,
    "extra-flagged": 0.04, "extra-clean": 0.04,
}


@dataclass(frozen=True)
class Example:
    text: str
    source: str  # davidson, toxigen or extra: picks the sampling bucket
    bucket: str  # source plus class, used for balanced sampling
    labels: tuple  # 0/1 per label (evaluation)
    targets: tuple  # soft 0..1 per label (training loss)
    mask: tuple  # 1 where the source knows the label


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
    """Tweets; hate speech also counts as harassment. Soft targets use the vote shares."""
    path = os.path.join(datasets_dir, "davidson-2017", "labeled_data.csv")
    examples = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = normalise(row["tweet"])
            count = int(row["count"])
            hate_votes, offensive_votes = int(row["hate_speech"]), int(row["offensive_language"])
            klass = int(row["class"])
            examples.append(Example(
                text=text, source="davidson",
                bucket=("davidson-hate", "davidson-offensive", "davidson-neither")[klass],
                labels=(int(klass == 0), int(klass in (0, 1)), 0),
                targets=(hate_votes / count, (hate_votes + offensive_votes) / count, 0.0),
                mask=(1, 1, 1),
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
                    labels = (int(is_hate), 0, violent)
                    examples.append(Example(
                        text=statement, source="toxigen",
                        bucket="toxigen-hate" if is_hate else "toxigen-neutral",
                        labels=labels, targets=tuple(float(v) for v in labels), mask=(1, 0, 1),
                    ))
    return examples


def load_extra_examples(path=EXTRA_EXAMPLES_PATH):
    """The project's own examples for cases the human data lacks (see the file's header)."""
    examples = []
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    for row in rows[1:]:  # skip the header row
        text, label_field = row.split("\t")
        names = set() if label_field == "none" else set(label_field.split(","))
        unknown = names - set(LABELS)
        if unknown:
            raise ValueError(f"unknown labels {unknown} in {path}: {row!r}")
        labels = tuple(int(name in names) for name in LABELS)
        examples.append(Example(
            text=text, source="extra", bucket="extra-flagged" if names else "extra-clean",
            labels=labels, targets=tuple(float(v) for v in labels), mask=(1, 1, 1),
        ))
    return examples


def deduplicate(examples):
    """Keep the first example per dedup key; must run before splitting or the test leaks."""
    seen, unique = set(), []
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


def load_splits(datasets_dir):
    """All sources, de-duplicated, as {"train": [...], "val": [...], "test": [...]}."""
    examples = deduplicate(
        load_extra_examples() + load_toxigen(datasets_dir) + load_davidson(datasets_dir)
    )
    splits = {"train": [], "val": [], "test": []}
    for example in examples:
        splits[split_name(example.text)].append(example)
    return splits


def bucket_weights(examples):
    """Per-example weight (summing to 1) so that each bucket gets its BUCKET_SHARES share."""
    counts = {}
    for example in examples:
        counts[example.bucket] = counts.get(example.bucket, 0) + 1
    total_share = sum(BUCKET_SHARES[bucket] for bucket in counts)
    return [BUCKET_SHARES[e.bucket] / total_share / counts[e.bucket] for e in examples]
