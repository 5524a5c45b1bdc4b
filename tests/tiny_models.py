"""Tiny real HF classifiers that tests build and save with save_pretrained.

- `build_tiny_model`: random weights (seeded). Scores vary from text to text, which is what tests of
  ordering and batching need, but nobody knows them in advance.
- `build_known_model`: weights set by hand so each text's scores are known before it runs: a text's
  logits depend only on which *marker* words it contains (see KnownModel). Tests of thresholds and
  flags use these, so chosen texts land on chosen sides of each threshold.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

WORDS = ("i love my new puppy the weather is nice today we should hate kill all you are an idiot "
         "great food from mexico disagree with your tax policy martians animals eradicate them").split()
HIDDEN = 16


def _tokenizer(path: Path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *string.ascii_lowercase,
             *[f"##{c}" for c in string.ascii_lowercase], *string.digits, *string.punctuation]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=64)


def _config(tokenizer, labels: list[str], multi_label: bool, thresholds: dict | None, vocab_size: int = 0):
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=vocab_size or len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    if thresholds:
        config.thresholds = thresholds
    return config


def build_tiny_model(path: Path, labels: list[str], multi_label: bool, thresholds: dict | None = None,
                     seed: int = 0, missing_tokens: int = 0) -> Path:
    """Random weights. `missing_tokens` > 0 leaves the last vocabulary entries (punctuation, '~' last) out of
    the embedding table: a broken model whose forward pass raises IndexError on texts that use them."""
    import torch
    from transformers import BertForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(path)
    torch.manual_seed(seed)
    config = _config(tokenizer, labels, multi_label, thresholds, len(tokenizer) - missing_tokens)
    # BERT's default init (std 0.02) gives every text nearly the same scores (0.498 +- 1e-5), so a check
    # that results come back in the right order could not fail; std 1.0 spreads them over (0, 1).
    config.initializer_range = 1.0
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


@dataclass(frozen=True)
class KnownModel:
    """A classifier whose logits are `base` plus, for each marker word present in the text, `markers[word]`.

    Presence is per word (a whole token of the tiny vocabulary, any case); how often a marker occurs,
    where it is, and every other word change nothing.
    """
    labels: tuple[str, ...]
    multi_label: bool
    base: dict[str, float]  # label -> logit with no marker
    markers: dict[str, dict[str, float]]  # marker word -> {label: logit added}
    thresholds: dict[str, float] = field(default_factory=dict)  # written to config.json

    def logits(self, text: str) -> list[float]:
        words = set(re.findall(r"\w+", text.lower()))
        return [self.base.get(label, 0.0) + sum(delta.get(label, 0.0) for word, delta in self.markers.items()
                                                if word in words)
                for label in self.labels]

    def scores(self, text: str) -> dict[str, float]:
        """The probabilities, computed here in plain Python (sigmoid, or softmax for single-label)."""
        values = self.logits(text)
        if self.multi_label:
            probabilities = [1 / (1 + math.exp(-v)) for v in values]
        else:
            exps = [math.exp(v - max(values)) for v in values]
            probabilities = [e / sum(exps) for e in exps]
        return dict(zip(self.labels, probabilities))


def build_known_model(path: Path, spec: KnownModel) -> Path:
    """A BERT whose weights implement `spec` exactly.

    How: each marker word's embedding has a large value in its own hidden dimension (zero for every
    other token, and every embedding is zero-mean so LayerNorm keeps those zeros). Attention is uniform
    (zero query/key weights) with identity value/output maps, so the [CLS] state's marker dimension is
    positive iff the marker occurs anywhere in the text, and exactly 0 otherwise; the feed-forward
    block adds nothing. The pooler multiplies that dimension by a large gain past a small offset, so
    tanh saturates to exactly +1.0 or -1.0 in float32, and the head maps +-1 to base + delta or base.
    `spec.scores` computes the same numbers without torch; the build checks the two agree.
    """
    import torch
    from transformers import BertForSequenceClassification

    markers = list(spec.markers)
    if len(markers) > 4:
        raise ValueError("at most 4 marker words")
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(path)
    config = _config(tokenizer, list(spec.labels), spec.multi_label, spec.thresholds)
    model = BertForSequenceClassification(config).eval()
    vocab = tokenizer.get_vocab()
    generator = torch.Generator().manual_seed(0)
    free = list(range(len(markers), HIDDEN))  # hidden dimensions that carry no marker
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        # Embeddings: a zero-mean pattern per token in the free dimensions; markers add +4 in their own.
        pattern = torch.randn(len(vocab), len(free), generator=generator)
        words = model.bert.embeddings.word_embeddings.weight
        words[:, free] = pattern - pattern.mean(dim=1, keepdim=True)
        for dim, word in enumerate(markers):
            words[vocab[word], dim] = 4.0
            words[vocab[word], free] -= 4.0 / len(free)
        layer = model.bert.encoder.layer[0]
        layer.attention.self.value.weight.copy_(torch.eye(HIDDEN))
        layer.attention.output.dense.weight.copy_(torch.eye(HIDDEN))
        # Pooler: pooled[dim] = tanh(GAIN * (h[dim] - OFFSET)). A single marker among 64 tokens puts
        # about 0.02 in h[dim]; its absence leaves float noise (~1e-7).
        gain, offset = 2e4, 0.005
        for dim in range(len(markers)):
            model.bert.pooler.dense.weight[dim, dim] = gain
            model.bert.pooler.dense.bias[dim] = -gain * offset
        head = model.classifier
        for j, label in enumerate(spec.labels):
            deltas = [spec.markers[word].get(label, 0.0) for word in markers]
            head.bias[j] = spec.base.get(label, 0.0) + sum(deltas) / 2
            for dim, delta in enumerate(deltas):
                head.weight[j, dim] = delta / 2
    _check_known_model(model, tokenizer, spec, markers)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _check_known_model(model, tokenizer, spec: KnownModel, markers: list[str]) -> None:
    """Every combination of markers, short and at full length, padded in one batch: logits as specified."""
    import itertools

    import torch

    texts = []
    for count in range(len(markers) + 1):
        for chosen in itertools.combinations(markers, count):
            texts.append(" ".join(("the weather", *chosen, "is nice")))
            texts.append(" ".join([*chosen] + ["great food"] * 40))  # one marker among 64 tokens
            texts.append(" ".join(["great food"] * 40 + [*chosen]))  # markers cut off by truncation
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits
    for text, row in zip(texts, logits.tolist()):
        ids = tokenizer(text, truncation=True)["input_ids"]
        words = tokenizer.convert_ids_to_tokens(ids)[1:-1]  # what survives truncation
        expected = spec.logits(" ".join(w for w in words if not w.startswith("##")))
        if not all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(row, expected)):
            raise AssertionError(f"known model built wrong for {text!r}: {row} != {expected}")
def build_tiny_fnet_model(path: Path, labels: list[str], seed: int = 0) -> Path:
    """A tiny FNet classifier: a real architecture whose Fourier mixing (aten::fft_fftn) ONNX cannot export."""
    import torch
    from transformers import BertTokenizerFast, FNetConfig, FNetForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    build_tiny_model(path, labels, multi_label=True, seed=seed)  # for its vocabulary and tokenizer files
    tokenizer = BertTokenizerFast.from_pretrained(path)
    torch.manual_seed(seed)
    config = FNetConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, intermediate_size=32,
        max_position_embeddings=64, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, problem_type="multi_label_classification",
    )
    for stale in path.glob("*.safetensors"):
        stale.unlink()
    FNetForSequenceClassification(config).save_pretrained(path)
    return path
