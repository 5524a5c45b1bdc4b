"""Cascade models (worker/cascade.py, model/cascade.py): a fast model scores every window, an accurate one the
windows within the band of a threshold, and one model name serves both.

The stages are known-score models (tests/tiny_models.py): a window's scores depend only on the marker words it
holds, so which windows are uncertain, and what each stage answers, is computed here in plain Python from the
models' specs. The stages disagree on purpose: the fast model puts "idiot" just over its harassment threshold,
the accurate one well under its own, and the two models' thresholds differ, so a missing threshold mapping or a
window sent to the wrong stage changes a verdict.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import requests

from shared.cascade import ACCURATE, FAST
from shared.config import load_settings
from shared.model_registry import build_spec, read_model_config
from shared.schemas import ModerationResult
from tests.conftest import MULTI_LABELS
from tests.scrape import metric, worker_samples
from tests.support import ROOT, base_env, start_api, start_worker
from tests.tiny_models import KnownModel, build_known_model, build_tiny_model, logit

# Distances from the fast thresholds, in logit units: no marker 1.39 (violence 0.2 against 0.5) or more;
# "hate" 0.20 (0.45 against 0.5); "idiot" 0.23 (0.35 against 0.3); "kill" 2.20 (0.9 against 0.5).
FAST_MODEL = KnownModel(
    labels=tuple(MULTI_LABELS), multi_label=True,
    base={"hate": logit(0.10), "harassment": logit(0.05), "violence": logit(0.20)},
    markers={"hate": {"hate": logit(0.45) - logit(0.10)},
             "idiot": {"harassment": logit(0.35) - logit(0.05)},
             "kill": {"violence": logit(0.90) - logit(0.20)}},
    thresholds={"hate": 0.5, "harassment": 0.3, "violence": 0.5},
)
# The accurate model: "hate" is hate (0.8 >= 0.6), "idiot" is not harassment (0.2 < 0.4). Its violence threshold
# (0.15) lies under the fast model's plain-text violence score (0.2): unmapped, every fast-decided text would
# be flagged for violence.
ACCURATE_MODEL = KnownModel(
    labels=tuple(MULTI_LABELS), multi_label=True,
    base={"hate": logit(0.05), "harassment": logit(0.05), "violence": logit(0.05)},
    markers={"hate": {"hate": logit(0.80) - logit(0.05)},
             "idiot": {"harassment": logit(0.20) - logit(0.05)},
             "kill": {"violence": logit(0.70) - logit(0.05)}},
    thresholds={"hate": 0.6, "harassment": 0.4, "violence": 0.15},
)
BAND = 1.0  # between "hate"/"idiot" (0.2) and everything else (1.39 and more)
TEXTS = ["i love my new puppy", "you are an idiot", "we should kill them all", "we should hate martians",
         "great food from mexico", "you idiot we should kill you"]
SENTENCE = "the weather is nice today. "  # 6 tokens, no marker


def uncertain(text: str, band: float) -> bool:
    """The fast model is unsure of a window holding `text`: some label's logit within `band` of its threshold."""
    return any(abs(value - logit(FAST_MODEL.thresholds[label])) < band
               for label, value in zip(FAST_MODEL.labels, FAST_MODEL.logits(text)))


def mapped(text: str) -> list[float]:
    """The fast model's scores for `text` on the accurate model's threshold scale, written out by hand."""
    return [1 / (1 + math.exp(-(value - logit(FAST_MODEL.thresholds[label])
                               + logit(ACCURATE_MODEL.thresholds[label]))))
            for label, value in zip(FAST_MODEL.labels, FAST_MODEL.logits(text))]


def expected_row(text: str, band: float) -> list[float]:
    if uncertain(text, band):
        return [*ACCURATE_MODEL.scores(text).values(), 1.0]
    return [*mapped(text), 0.0]


def assert_rows(actual: list[list[float]], expected: list[list[float]]) -> None:
    assert len(actual) == len(expected)
    for row, want in zip(actual, expected):
        assert len(row) == len(want) and all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(row, want)), (row, want)


def run_cascade(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model.cascade", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade-stages")
    return build_known_model(root / "fast", FAST_MODEL), build_known_model(root / "accurate", ACCURATE_MODEL)


@pytest.fixture(scope="module")
def folder(stages):
    """The cascade folder beside its stages, written by the command as users run it."""
    output = stages[0].parent / "moderation-cascade"
    done = run_cascade("--fast", str(stages[0]), "--accurate", str(stages[1]), "--band", str(BAND),
                       "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(output)
    return output


def load(folder, band: float | None = None):
    from worker.cascade import CascadeClassifier

    counts: Counter = Counter()
    classifier = CascadeClassifier(str(folder), device="cpu", engine="torch", quantize="none", band=band,
                                   on_windows=lambda stage, windows: counts.update({stage: windows}))
    return classifier, counts


# --- the folder -----------------------------------------------------------------------------------------------


def test_the_folder_is_the_accurate_config_the_fast_tokenizer_and_both_stages(folder, stages):
    config = read_model_config(str(folder))
    fast_id = build_spec("f", str(stages[0]), read_model_config(str(stages[0])), load_settings({})).model_id
    accurate_id = build_spec("a", str(stages[1]), read_model_config(str(stages[1])), load_settings({})).model_id
    assert config["cascade"] == {"fast": "../fast", "accurate": "../accurate", "band": BAND,
                                 "fast_thresholds": FAST_MODEL.thresholds, "fast_id": fast_id,
                                 "accurate_id": accurate_id}  # no "blend": the accurate scores stand
    assert config["thresholds"] == ACCURATE_MODEL.thresholds and config["model_version"].startswith(
        f"{fast_id}+{accurate_id}")
    assert (folder / "tokenizer.json").read_bytes() == (stages[0] / "tokenizer.json").read_bytes()
    assert not list(folder.glob("*.safetensors"))
    spec = build_spec("cascade", str(folder), config, load_settings({}))
    assert spec.describe()["cascade"] == {"fast": fast_id, "accurate": accurate_id, "band": BAND,
                                          "blended": False}
    assert spec.thresholds == ACCURATE_MODEL.thresholds and spec.labels == tuple(MULTI_LABELS)
    assert build_spec("cascade", str(folder), config, load_settings({"CASCADE_BAND": "0.5"})).cascade.band == 0.5
    assert build_spec("plain", str(stages[0]), read_model_config(str(stages[0])), load_settings({})).cascade is None


def test_the_command_refuses_stages_that_cannot_make_a_cascade(stages, tmp_path):
    other = build_tiny_model(tmp_path / "other-labels", ["hate", "violence", "harassment"], multi_label=True)
    done = run_cascade("--fast", str(stages[0]), "--accurate", str(other), "--band", "1", "--output",
                       str(tmp_path / "refused"))
    assert done.returncode != 0 and "labels differ" in done.stderr, done.stderr
    assert not (tmp_path / "refused").exists()

    from model.cascade import build
    single = build_tiny_model(tmp_path / "single", MULTI_LABELS, multi_label=False)
    with pytest.raises(ValueError, match="not a multi-label model"):
        build(str(single), str(stages[1]), 1.0, str(tmp_path / "refused"))
    with pytest.raises(ValueError, match="no readable config.json"):
        build(str(tmp_path / "nowhere"), str(stages[1]), 1.0, str(tmp_path / "refused"))
    with pytest.raises(ValueError, match="band"):
        build(str(stages[0]), str(stages[1]), -1.0, str(tmp_path / "refused"))
    with pytest.raises(ValueError, match="band"):
        build(str(stages[0]), str(stages[1]), {"hate": 1.0, "violence": -0.5}, str(tmp_path / "refused"))
    with pytest.raises(ValueError, match="needs its own thresholds"):
        build(str(stages[0]), str(stages[1]), 1.0, str(tmp_path / "refused"), blend=BLEND)
    with pytest.raises(ValueError, match="must name the models' labels"):
        build(str(stages[0]), str(stages[1]), 1.0, str(tmp_path / "refused"), blend={"hate": [1, 1, 0]},
              thresholds={"hate": 0.5})
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("blend", [{"hate": [1.0, 2.0]}, {"hate": "strong"}, ["hate"]])
def test_a_malformed_blend_is_refused_with_the_keys_expected(blend):
    from shared.cascade import CascadeConfig

    with pytest.raises(ValueError, match="blend"):
        CascadeConfig.of({"cascade": {"fast": "f", "accurate": "a", "band": 1.0, "blend": blend}})


# --- which stage scores which window --------------------------------------------------------------------------


def test_band_zero_is_the_fast_model_alone_on_the_accurate_scale(folder, stages):
    from worker.inference import TextClassifier
    from worker.policy import moderation_result

    cascade, counts = load(folder, band=0.0)
    rows = cascade.score_many(TEXTS, 32, 512)
    assert_rows(rows, [[*mapped(text), 0.0] for text in TEXTS])
    assert counts == {FAST: len(TEXTS), ACCURATE: 0}
    # The verdicts are the fast model's under its own thresholds, read with the accurate model's.
    fast = TextClassifier(str(stages[0]), device="cpu", engine="torch", quantize="none")
    spec = build_spec("cascade", str(folder), read_model_config(str(folder)), load_settings({}))
    for text, row, fast_row in zip(TEXTS, rows, fast.score_many(TEXTS, 32, 512)):
        result = moderation_result(row, spec)
        assert result["stage"] == FAST
        assert result["categories"] == {label: score >= FAST_MODEL.thresholds[label]
                                        for label, score in zip(MULTI_LABELS, fast_row)}, text
    assert not moderation_result(rows[0], spec)["flagged"]  # unmapped, 0.2 would pass violence's 0.15


def test_a_huge_band_is_the_accurate_model_alone(folder):
    cascade, counts = load(folder, band=1e6)
    assert_rows(cascade.score_many(TEXTS, 32, 512), [[*ACCURATE_MODEL.scores(text).values(), 1.0] for text in TEXTS])
    assert counts == {FAST: len(TEXTS), ACCURATE: len(TEXTS)}


def test_the_band_sends_exactly_the_windows_within_it(folder):
    cascade, counts = load(folder)  # the folder's band
    assert cascade.band == BAND
    sent = [text for text in TEXTS if uncertain(text, BAND)]
    assert sent == ["you are an idiot", "we should hate martians", "you idiot we should kill you"]
    assert_rows(cascade.score_many(TEXTS, 32, 512), [expected_row(text, BAND) for text in TEXTS])
    assert counts == {FAST: len(TEXTS), ACCURATE: len(sent)}


def test_a_long_text_is_decided_by_the_accurate_stage_iff_one_of_its_windows_was_uncertain(folder):
    from worker.policy import moderation_result

    cascade, counts = load(folder)
    unsure = SENTENCE * 12 + "you are an idiot. " + SENTENCE * 12 + "we should kill them."
    sure = SENTENCE * 12 + "we should kill them. " + SENTENCE * 12
    texts = [unsure, sure]
    windows = cascade.windows_per_text(texts)
    assert min(windows) >= 3, windows
    # Each window as the fast model read it (the tokenizer's own decoding), and its expected row.
    encoded, owners = cascade.encode(texts)
    read = [cascade.tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded["input_ids"]]
    assert_rows(cascade.window_scores(encoded, 32, 512), [expected_row(window, BAND) for window in read])
    flags = [any(uncertain(window, BAND) for window, owner in zip(read, owners) if owner == i) for i in range(2)]
    assert flags == [True, False]
    assert 0 < counts[ACCURATE] < windows[0]  # only the windows holding "idiot"

    spec = build_spec("cascade", str(folder), read_model_config(str(folder)), load_settings({}))
    unsure_result, sure_result = (moderation_result(row, spec) for row in cascade.score_many(texts, 32, 512))
    assert unsure_result["stage"] == ACCURATE and sure_result["stage"] == FAST
    # Its windows' verdicts add up: violence from a fast-decided window, no harassment (the accurate stage's).
    assert unsure_result["categories"] == {"hate": False, "harassment": False, "violence": True}
    assert sure_result["categories"]["violence"] and not sure_result["categories"]["harassment"]


def test_slices_and_the_score_cache_keep_the_stage_column(folder, redis_client):
    from worker.cache import ScoreCache
    from worker.slices import score_slice

    cascade, _ = load(folder)
    texts = [SENTENCE * 12 + "you are an idiot.", *TEXTS]
    whole = cascade.score_many(texts, 32, 512)
    cursor, partial, slices = "", None, 0
    while True:  # 40 tokens a slice: the long text is read over several
        part = score_slice(cascade, texts, None, cursor, partial, 40, 32, 512)
        partial, cursor, slices = json.loads(json.dumps(part.scores)), part.cursor, slices + 1  # as the record
        if part.done:
            break
    assert slices > 2
    assert_rows(partial, whole)
    cache = ScoreCache(redis_client, "cascade-test", 60)
    cache.put_many(texts, whole)
    assert_rows(cache.get_many(texts), whole)


def test_the_cache_namespace_changes_with_the_band(folder):
    from worker.runtime import _fingerprint

    assert _fingerprint("c", load(folder)[0]) == _fingerprint("c", load(folder, band=BAND)[0])
    assert _fingerprint("c", load(folder)[0]) != _fingerprint("c", load(folder, band=0.5)[0])


def test_the_stage_is_serialised_only_when_there_is_one():
    plain = {"flagged": False, "categories": {"hate": False}, "category_scores": {"hate": 0.1}}
    assert "stage" not in json.loads(ModerationResult.model_validate(plain).model_dump_json())
    assert json.loads(ModerationResult.model_validate({**plain, "stage": ACCURATE}).model_dump_json())["stage"] \
        == ACCURATE


# --- a blended accurate stage and per-label bands (what `python -m model.compare --choose-band` chooses) ----------

# Per label [w_fast, w_accurate, bias]: the verdict leans on each model differently per label, so a blend applied
# to the wrong label, or the accurate scores left alone, changes the rows.
BLEND = {"hate": [0.6, 0.8, -0.3], "harassment": [1.2, 0.3, 0.4], "violence": [0.2, 1.1, 0.0]}
BLEND_THRESHOLDS = {"hate": 0.55, "harassment": 0.45, "violence": 0.25}
BANDS = {"hate": 1.0, "harassment": 0.0, "violence": 0.0}  # only hate's doubtful windows go on


def blended_row(text: str) -> list[float]:
    fast, accurate = FAST_MODEL.logits(text), ACCURATE_MODEL.logits(text)
    return [1 / (1 + math.exp(-(w_fast * f + w_accurate * a + bias)))
            for (w_fast, w_accurate, bias), f, a in zip(BLEND.values(), fast, accurate)]


def moved_to(text: str, thresholds: dict) -> list[float]:
    return [1 / (1 + math.exp(-(value - logit(FAST_MODEL.thresholds[label]) + logit(thresholds[label]))))
            for label, value in zip(FAST_MODEL.labels, FAST_MODEL.logits(text))]


@pytest.fixture(scope="module")
def blended_folder(stages):
    choice = stages[0].parent / "cascade.json"
    choice.write_text(json.dumps({"band": BANDS, "blend": BLEND, "thresholds": BLEND_THRESHOLDS, "rule": "a test"}))
    output = stages[0].parent / "blended-cascade"
    done = run_cascade("--fast", str(stages[0]), "--accurate", str(stages[1]), "--choice", str(choice),
                       "--output", str(output))
    assert done.returncode == 0, done.stderr
    return output


def test_a_blended_cascade_answers_with_both_models_stacked_on_the_windows_its_per_label_bands_send(blended_folder):
    config = read_model_config(str(blended_folder))
    assert config["thresholds"] == BLEND_THRESHOLDS and config["cascade"]["blend"] == BLEND
    assert config["cascade"]["band"] == BANDS
    spec = build_spec("cascade", str(blended_folder), config, load_settings({}))
    assert spec.describe()["cascade"]["blended"] is True and spec.thresholds == BLEND_THRESHOLDS

    cascade, counts = load(blended_folder)
    sent = [text for text in TEXTS if abs(FAST_MODEL.logits(text)[0] - logit(FAST_MODEL.thresholds["hate"])) < 1.0]
    assert sent == ["we should hate martians"]  # "idiot" is as doubtful, but harassment's band is 0
    assert_rows(cascade.score_many(TEXTS, 32, 512),
                [[*blended_row(text), 1.0] if text in sent else [*moved_to(text, BLEND_THRESHOLDS), 0.0]
                 for text in TEXTS])
    assert counts == {FAST: len(TEXTS), ACCURATE: len(sent)}
    # CASCADE_BAND is one band for every label; the blend still decides what goes on.
    everything, _ = load(blended_folder, band=1e6)
    assert_rows(everything.score_many(TEXTS, 32, 512), [[*blended_row(text), 1.0] for text in TEXTS])


def test_the_choice_simulates_what_the_worker_answers(blended_folder, stages):
    """model/cascade_choice.py picks the bands from a simulation on whole texts: it must be the worker's answer."""
    import numpy as np

    from model.cascade_choice import simulated_cascade
    from worker.inference import TextClassifier

    fast, accurate = (TextClassifier(str(stage), device="cpu", engine="torch", quantize="none") for stage in stages)
    scores, unsure = simulated_cascade(np.array(fast.score_many(TEXTS, 32, 512)),
                                       np.array(accurate.score_many(TEXTS, 32, 512)), FAST_MODEL.thresholds,
                                       BLEND_THRESHOLDS, list(BANDS.values()), BLEND, labels=MULTI_LABELS)
    served = np.array(load(blended_folder)[0].score_many(TEXTS, 32, 512))
    assert np.allclose(scores, served[:, :-1], atol=1e-5) and (unsure == (served[:, -1] == 1.0)).all()


# --- served end to end ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(folder, redis_server, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("cascade-logs")
    env = base_env(redis_server.url, MODELS=f"cascade={folder}", CASCADE_BAND="")  # the folder's band
    worker = start_worker(env, logs / "worker.log", models=["cascade"])
    api = start_api(env, logs / "api.log", workers=1)
    yield {"api": api.url, "metrics": f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"}
    api.stop()
    worker.stop()


def test_a_served_cascade_names_the_deciding_stage_and_counts_each_stages_windows(stack):
    before = worker_samples(stack["metrics"])
    response = requests.post(stack["api"] + "/generate", json={"inputs": TEXTS, "model": "cascade", "wait": 30},
                             timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["stage"] for result in results] == [ACCURATE if uncertain(t, BAND) else FAST for t in TEXTS]
    for text, result in zip(TEXTS, results):
        want = expected_row(text, BAND)
        assert all(math.isclose(result["category_scores"][label], score, abs_tol=1e-5)
                   for label, score in zip(MULTI_LABELS, want)), (text, result)
    idiot = results[TEXTS.index("you are an idiot")]
    assert not idiot["flagged"]  # the fast model alone would flag it; the accurate stage decided

    after = worker_samples(stack["metrics"])
    name = "moderation_cascade_windows_total"
    sent = {stage: metric(after, name, "cascade", stage=stage) - metric(before, name, "cascade", stage=stage)
            for stage in (FAST, ACCURATE)}
    assert sent == {FAST: len(TEXTS), ACCURATE: sum(uncertain(text, BAND) for text in TEXTS)}

    models = requests.get(stack["api"] + "/models", timeout=10).json()["models"]
    assert models[0]["cascade"]["band"] == BAND and models[0]["cascade"]["fast"].startswith("fast-")
    openai_shape = requests.post(stack["api"] + "/v1/moderations", json={"input": "you are an idiot"}, timeout=60)
    assert openai_shape.status_code == 200 and "stage" not in openai_shape.json()["results"][0]
