"""Tiny real HF classifiers that tests build and save with save_pretrained (random weights, seeded)."""

from __future__ import annotations

import string
from pathlib import Path

WORDS = ("i love my new puppy the weather is nice today we should hate kill all you are an idiot "
         "great food from mexico disagree with your tax policy martians animals eradicate them").split()


def build_tiny_model(path: Path, labels: list[str], multi_label: bool, thresholds: dict | None = None,
                     seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *string.ascii_lowercase,
             *[f"##{c}" for c in string.ascii_lowercase], *string.digits, *string.punctuation]
    vocab_file = path / "vocab.txt"
    vocab_file.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=64)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    if thresholds:
        config.thresholds = thresholds
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
