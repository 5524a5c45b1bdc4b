"""A test-only model type whose forward pass kills its process: the poison tests' "native crash".

`crash-bert` is a tiny BERT classifier (tests/tiny_models.py) that SIGKILLs the process running it when
a text holds its marker word, as an out-of-memory kill or a segfault in a tokenizer or kernel would.
Nothing in the service knows it: only a worker started by tests/hooked_worker.py (`crash-model` hook)
registers the type with transformers' Auto classes, so a plain `python -m worker` cannot even load it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

MODEL_TYPE = "crash-bert"


class CrashBertConfig(BertConfig):
    model_type = MODEL_TYPE

    def __init__(self, crash_token_id: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.crash_token_id = crash_token_id


class CrashBertForSequenceClassification(BertForSequenceClassification):
    config_class = CrashBertConfig

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        if input_ids is not None and bool((input_ids == self.config.crash_token_id).any()):
            print(f"{MODEL_TYPE}: marker token in a forward pass; SIGKILL", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               **kwargs)


def register() -> None:
    AutoConfig.register(MODEL_TYPE, CrashBertConfig)
    AutoModelForSequenceClassification.register(CrashBertConfig, CrashBertForSequenceClassification)


def build_crash_model(path: Path, labels: list[str], marker_word: str) -> Path:
    """A tiny crash-bert in `path` (save_pretrained) that dies on `marker_word`, a word of tiny_models.WORDS."""
    from tests.tiny_models import build_tiny_model

    build_tiny_model(path, labels, multi_label=True)
    plain = BertForSequenceClassification.from_pretrained(path)
    from transformers import AutoTokenizer

    crash_token_id = AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(marker_word)
    config = CrashBertConfig(crash_token_id=crash_token_id, **plain.config.to_diff_dict())
    model = CrashBertForSequenceClassification(config)
    model.load_state_dict(plain.state_dict())
    model.save_pretrained(path)
    return path
