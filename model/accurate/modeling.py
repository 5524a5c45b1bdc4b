"""The accurate classifier: a plain MPNetForSequenceClassification on all-mpnet-base-v2.

Training updates only the encoder layers from FIRST_TRAINED_LAYER up and the head (`classifier.dense`,
`classifier.out_proj`); the artifact (model/accurate/artifact/) stores just those, the rest comes from the
pip packages (model/accurate/base.py). The head's dense layer starts from the checkpoint's pooler (the
same dense + tanh on the first token), so only `out_proj` starts from scratch. Lower layers are frozen
and cached once during training (model/accurate/train.py): on 2 CPU cores a full fine-tune of 110M
parameters is out of reach, the top two layers are not.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from transformers import MPNetConfig, MPNetForSequenceClassification

from model.accurate.base import base_dir
from model.modeling import moderation_config
from model.train import padded

ARTIFACT_DIR = os.path.join(os.path.dirname(__file__), "artifact")
FIRST_TRAINED_LAYER = 10  # embeddings and layers 0-9 stay as shipped; 10-11 and the head are trained
MAX_LENGTH = 128  # tokens per window: more context than the fast model's 64, at twice the cost per window
HEAD = "classifier.out_proj"  # where calibration folds its per-label scaling (model/calibrate.py)


def is_trained_parameter(name: str, first_trained_layer: int = FIRST_TRAINED_LAYER) -> bool:
    if name.startswith("classifier."):
        return True
    prefix = "mpnet.encoder.layer."
    return name.startswith(prefix) and int(name[len(prefix):].split(".")[0]) >= first_trained_layer


def classifier_config(thresholds=None) -> MPNetConfig:
    return moderation_config(MPNetConfig.from_pretrained(base_dir()), "MPNetForSequenceClassification", thresholds)


def base_state_dict() -> dict:
    """The package's encoder weights under MPNetForSequenceClassification's names; its pooler seeds the head."""
    weights = load_file(os.path.join(base_dir(), "model.safetensors"))
    state = {f"mpnet.{name}": tensor for name, tensor in weights.items()
             if not name.endswith("position_ids") and not name.startswith("pooler.")}
    state["classifier.dense.weight"] = weights["pooler.dense.weight"]
    state["classifier.dense.bias"] = weights["pooler.dense.bias"]
    return state


def build_classifier(trained_weights=None, thresholds=None, seed=0) -> MPNetForSequenceClassification:
    torch.manual_seed(seed)  # out_proj's initial values when no trained weights are given
    model = MPNetForSequenceClassification(classifier_config(thresholds))
    state = base_state_dict()
    if trained_weights is not None:
        state.update({name: tensor.float() for name, tensor in trained_weights.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {f"{HEAD}.weight", f"{HEAD}.bias"} if trained_weights is None else set()
    if unexpected or set(missing) - allowed_missing:
        raise ValueError(f"weights do not fit the model: missing={missing} unexpected={unexpected}")
    return model.eval()


def trained_weights_fp16(model) -> dict:
    return {name: param.detach().to(torch.float16).contiguous()
            for name, param in sorted(model.named_parameters()) if is_trained_parameter(name)}


def extended_mask(attention: torch.Tensor) -> torch.Tensor:
    """What MPNetModel passes its layers: 0 where a token may attend, a large negative number at padding."""
    return (1.0 - attention[:, None, None, :].float()) * torch.finfo(torch.float32).min


@torch.no_grad()
def lower_hidden_states(model, tokenizer, texts: list[str], batch_size: int = 32) -> list[torch.Tensor]:
    """The frozen layers' output per text (trimmed to its length, fp16): computed once, reused every step.
    `model` may be a dynamically quantised copy: the cache is what int8 lower layers see when served."""
    mpnet = model.mpnet
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    states = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")
        hidden = mpnet.embeddings(input_ids=encoded["input_ids"])
        bias = mpnet.encoder.compute_position_bias(hidden)
        mask = extended_mask(encoded["attention_mask"])
        for layer in mpnet.encoder.layer[:FIRST_TRAINED_LAYER]:
            hidden = layer(hidden, mask, None, bias)[0]
        for row, i in enumerate(batch):
            states[i] = hidden[row, :int(encoded["attention_mask"][row].sum())].to(torch.float16)
    return states


def top_logits(model, states: list[torch.Tensor]) -> torch.Tensor:
    """The trained part (top layers and head) on cached states."""
    mpnet = model.mpnet
    hidden, attention = padded(states)
    bias = mpnet.encoder.compute_position_bias(hidden)
    mask = extended_mask(attention)
    for layer in mpnet.encoder.layer[FIRST_TRAINED_LAYER:]:
        hidden = layer(hidden, mask, None, bias)[0]
    return model.classifier(hidden)
