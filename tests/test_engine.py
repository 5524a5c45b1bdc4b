"""Engine choice, ONNX export cache and the torch fallback, with tiny real models."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import requests

from shared.config import ConfigError, load_settings
from tests.conftest import MULTI_LABELS
from tests.support import base_env, start_api, start_worker
from tests.tiny_models import build_tiny_fnet_model
from worker.engines.onnx_export import cached_onnx_path
from worker.inference import TextClassifier

TEXTS = ["i love my new puppy", "we should kill all martians", "you are an idiot"]


@pytest.fixture(scope="module")
def fnet_model(tmp_path_factory):
    return build_tiny_fnet_model(tmp_path_factory.mktemp("tiny-fnet"), MULTI_LABELS)


def onnx_files(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def test_auto_runs_onnx_int8_on_cpu(tiny_multilabel_model, tmp_path):
    classifier = TextClassifier(str(tiny_multilabel_model), device="cpu", threads=1, cache_dir=str(tmp_path))
    assert (classifier.engine, classifier.precision, classifier.device) == ("onnx", "int8", "cpu")
    assert onnx_files(tmp_path) == [cached_onnx_path(str(tiny_multilabel_model), "int8", str(tmp_path)).name]
    assert len(classifier.score_many(TEXTS, 32, 512)) == 3


@pytest.mark.parametrize("engine,quantize,expected", [
    ("torch", "", ("torch", "int8")), ("torch", "none", ("torch", "fp32")),
    ("onnx", "none", ("onnx", "fp32")), ("auto", "int8", ("onnx", "int8")),
])
def test_engine_and_quantize_are_honoured(tiny_multilabel_model, tmp_path, engine, quantize, expected):
    classifier = TextClassifier(str(tiny_multilabel_model), "cpu", quantize, 1, engine, str(tmp_path))
    assert (classifier.engine, classifier.precision) == expected
    exported = onnx_files(tmp_path)
    if expected[0] == "torch":
        assert exported == []
    else:
        assert len(exported) == 1 and exported[0].endswith(f"-{quantize}.onnx")


def test_settings_read_engine_quantize_and_cache_dir(tmp_path):
    settings = load_settings({"ENGINE": "Torch", "QUANTIZE": "none", "ENGINE_CACHE_DIR": str(tmp_path)})
    assert (settings.engine, settings.quantize, settings.engine_cache_dir) == ("torch", "none", str(tmp_path))
    defaults = load_settings({})
    assert defaults.engine == "auto" and defaults.quantize == "" and defaults.engine_cache_dir.endswith(
        "var/engine-cache")
    with pytest.raises(ConfigError, match="ENGINE must be one of auto, torch, onnx"):
        load_settings({"ENGINE": "tensorrt"})
    with pytest.raises(ConfigError, match="QUANTIZE must be int8 or none"):
        load_settings({"QUANTIZE": "int4"})


def test_second_load_reuses_the_exported_file(tiny_multilabel_model, tmp_path):
    first = TextClassifier(str(tiny_multilabel_model), "cpu", "int8", 1, "onnx", str(tmp_path))
    assert not first.backend.reused_cache
    stat = first.backend.file.stat()
    second = TextClassifier(str(tiny_multilabel_model), "cpu", "int8", 1, "onnx", str(tmp_path))
    assert second.backend.reused_cache and second.backend.file == first.backend.file
    assert second.backend.file.stat().st_mtime_ns == stat.st_mtime_ns  # not rewritten
    assert onnx_files(tmp_path) == [first.backend.file.name]  # no temp files left behind
    assert second.score_many(TEXTS, 32, 512) == first.score_many(TEXTS, 32, 512)


def test_changed_model_content_gets_a_new_cache_file(tiny_multilabel_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_multilabel_model, copy)
    cache = tmp_path / "cache"
    before = cached_onnx_path(str(copy), "int8", str(cache))
    assert before == cached_onnx_path(str(tiny_multilabel_model), "int8", str(cache))  # content, not path
    assert before != cached_onnx_path(str(copy), "none", str(cache))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    after = cached_onnx_path(str(copy), "int8", str(cache))
    assert after != before
    TextClassifier(str(copy), "cpu", "int8", 1, "onnx", str(cache))
    assert onnx_files(cache) == [after.name]


def test_export_failure_logs_one_line_and_torch_runs(fnet_model, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        classifier = TextClassifier(str(fnet_model), "cpu", "none", 1, "auto", str(tmp_path))
    assert classifier.engine == "torch"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "ONNX export" in message and "fft" in message and "\n" not in message
    assert onnx_files(tmp_path) == []  # the failed export left nothing behind
    scores = classifier.score_many(TEXTS, 32, 512)
    assert len(scores) == 3 and all(len(row) == 3 and all(0 <= s <= 1 for s in row) for row in scores)


def test_service_answers_when_export_fails(fnet_model, redis_server, tmp_path):
    env = base_env(redis_server.url, MODEL_PATH=str(fnet_model), ENGINE_CACHE_DIR=str(tmp_path / "cache"),
                   BATCH_MAX_WAIT_MS="5", ENGINE="auto", QUANTIZE="")  # the default engine, as deployed
    api = start_api(env, tmp_path / "api.log", workers=1)
    worker = start_worker(env, tmp_path / "worker.log", models=["default"])
    try:
        response = requests.post(api.url + "/generate", json={"input_text": TEXTS[1], "wait": 20}, timeout=30)
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded" and set(job["results"][0]["category_scores"]) == set(MULTI_LABELS)
        log = worker.log_tail(100_000)
        assert log.count("ONNX export of") == 1 and "torch" in log
    finally:
        worker.stop()
        api.stop()


def test_a_folder_served_without_weights_runs_its_onnx_file_without_torch(tiny_multilabel_model, tmp_path):
    """The lean CPU image (docker/worker.Dockerfile): the export stage writes the model folder less its
    weights and the ONNX file under that folder's key; a worker without torch then scores with it."""
    served, cache, full_cache = tmp_path / "served", tmp_path / "cache", tmp_path / "full-cache"
    env = {**base_env("redis://127.0.0.1:1/0"), "ENGINE": "auto", "QUANTIZE": "", "ENGINE_CACHE_DIR": str(full_cache)}
    subprocess.run([sys.executable, "-m", "worker.engines.onnx_export", str(tiny_multilabel_model),
                    "--serve-dir", str(served), "--serve-cache", str(cache)], env=env, check=True, capture_output=True)
    assert (served / "config.json").is_file() and not list(served.glob("*.safetensors"))
    texts = ["you are an idiot", "hello there"]
    # torch made unimportable: the worker's CPU path must not reach for it.
    script = ("import sys, json; sys.modules['torch'] = None\n"
              "from worker.inference import TextClassifier\n"
              f"c = TextClassifier({str(served)!r}, device='cpu', threads=1, cache_dir={str(cache)!r})\n"
              f"print(json.dumps([c.engine, c.scores({texts!r})]))")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    engine, scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert engine == "onnx"
    # The same file as the full folder's export: the same scores.
    expected = TextClassifier(str(tiny_multilabel_model), device="cpu", threads=1, cache_dir=str(full_cache))
    assert sum(scores, []) == pytest.approx(sum(expected.scores(texts), []), abs=1e-6)
