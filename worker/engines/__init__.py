"""Model execution behind one small interface: padded token ids in, logits out.

worker/inference.py (tokenising, planning passes, probabilities) calls a Backend and never
touches torch or ONNX Runtime itself. Two backends:

- `torch` (worker/engines/torch_backend.py): the Hugging Face model; fp16 on CUDA, dynamic
  int8 (`torch.ao`) or fp32 on CPU. Also the fallback when ONNX export fails.
- `onnx` (worker/engines/onnx_backend.py): the model exported to ONNX once, dynamically
  quantised to int8 unless QUANTIZE=none, cached on disk, run by ONNX Runtime on CPU.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from shared.config import ENGINES, QUANTIZE_MODES  # noqa: F401  (one list for settings and engines)


class Backend(Protocol):
    name: str  # "torch" or "onnx": what actually runs
    device: str  # "cpu", "cuda", "cuda:1", ...
    precision: str  # "fp32", "int8" or "fp16"
    input_names: tuple[str, ...]  # the tokenizer outputs the model takes, e.g. input_ids, attention_mask

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits, shape (texts, labels), for int64 arrays of shape (texts, tokens)."""
        ...
