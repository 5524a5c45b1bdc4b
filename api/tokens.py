"""The token budget, counted at the door with the served model's own tokenizer (`tokenizers`, no torch).

A request is refused with 413 before anything is queued when one text holds more than MAX_TEXT_TOKENS
tokens or all its texts together more than MAX_REQUEST_TOKENS, as text-embeddings-inference refuses
inputs past --max-input-length: so no request can cost a worker more than a few seconds (docs/api.md
"Limits"). The count is the worker's: content tokens without the special tokens around them, the
tokens the worker reads windows from (worker/inference.py). The counts go into the job record, where
the worker plans its slices from them (worker/slices.py), and the per-minute token budget is charged
with their sum (api/limits.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import Tokenizer

from api.errors import APIError
from api.metrics import count_rejection, count_tokens
from shared import metrics as names
from shared.config import Settings
from shared.model_registry import ModelSpec

log = logging.getLogger(__name__)


class TokenCounter:
    """Counts a model's tokens per text. A model folder without a fast tokenizer (tokenizer.json) is
    counted one token per character: never fewer than its WordPiece or BPE tokens, so the budget holds."""

    def __init__(self, model_path: str):
        path = Path(model_path) / "tokenizer.json"
        self.tokenizer: Tokenizer | None = None
        if path.is_file():
            try:
                self.tokenizer = Tokenizer.from_file(str(path))
                self.tokenizer.no_truncation()
                self.tokenizer.no_padding()
            except Exception as exc:  # noqa: BLE001 (a tokenizer.json this tokenizers cannot read)
                log.warning("cannot load %s (%s); counting one token per character", path, exc)
                self.tokenizer = None
        else:
            log.warning("%s has no tokenizer.json; counting one token per character", model_path)

    def count(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:
            return [len(text) for text in texts]
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)]


def token_counters(specs: dict[str, ModelSpec]) -> dict[str, TokenCounter]:
    return {name: TokenCounter(spec.path) for name, spec in specs.items()}


def _param(field: str, texts: list[str], index: int) -> str:
    return field if field.endswith("_text") or (field == "input" and len(texts) == 1) else f"{field}[{index}]"


def check_token_budget(counter: TokenCounter, texts: list[str], settings: Settings, key_class: str,
                       model: str, field: str = "input") -> list[int]:
    """Tokens per text, or a 413 naming the count and the limit (MAX_TEXT_TOKENS, MAX_REQUEST_TOKENS).

    Counted a group of texts at a time, each group about as many characters as tokens are left in the
    budget, and refused as soon as the budget is passed: a 1 MiB body of one-character tokens costs the
    API the budget's worth of tokenising (milliseconds), not the whole body's (a second of CPU)."""
    counts: list[int] = []
    start = 0
    while start < len(texts):
        room, end = max(settings.max_request_tokens - sum(counts), 1), start
        chars = 0
        while end < len(texts) and (end == start or chars < room):
            chars += len(texts[end])
            end += 1
        group = counter.count(texts[start:end])
        for offset, tokens in enumerate(group):
            if tokens > settings.max_text_tokens:
                index = start + offset
                _refuse(model, key_class, sum(counts) + sum(group))
                raise APIError(413, "text_too_long",
                               f"{_param(field, texts, index)} holds {tokens} tokens; a text may hold at most "
                               f"MAX_TEXT_TOKENS={settings.max_text_tokens}", param=_param(field, texts, index),
                               tokens=tokens, limit=settings.max_text_tokens)
        counts += group
        start = end
        total = sum(counts)
        if total > settings.max_request_tokens:
            _refuse(model, key_class, total)
            rest = f" (counted in its first {end} of {len(texts)} texts)" if end < len(texts) else ""
            raise APIError(413, "request_too_large",
                           f"the request holds {'at least ' if rest else ''}{total} tokens{rest}; a request may "
                           f"hold at most MAX_REQUEST_TOKENS={settings.max_request_tokens} (split it into several "
                           "requests)", param=field, tokens=total, limit=settings.max_request_tokens)
    return counts


def _refuse(model: str, key_class: str, tokens: int) -> None:
    count_rejection(names.REJECT_TOO_LARGE)
    count_tokens(model, key_class, names.TOKENS_TOO_LARGE, tokens)
