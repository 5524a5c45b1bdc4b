"""The bundled model (`make model`) served end to end: the seed example is flagged through POST /generate."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from shared.config import BUNDLED_MODEL_PATH
from tests.support import ROOT, base_env, start_api, start_worker

SEED = "martians are ruthless animals we should eradicate them all"
PLAIN = ["I love my new puppy", "the weather is nice today", "I disagree with your tax policy",
         "my neighbour is from Mexico and cooks great food"]


@pytest.fixture(scope="module")
def bundled_stack(redis_server, tmp_path_factory):
    # `make test` builds it first; building here too keeps `pytest` alone working (it is quick and idempotent).
    built = subprocess.run([sys.executable, "-m", "model.build"], cwd=ROOT, capture_output=True, text=True,
                           check=True)
    assert built.stdout.strip().splitlines()[-1] == str(BUNDLED_MODEL_PATH)
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("bundled-logs")
    env = base_env(redis_server.url, ENGINE="auto", QUANTIZE="")  # no MODEL_PATH: the bundled default, as served
    api = start_api(env, logs / "api.log")
    worker = start_worker(env, logs / "worker.log", models=["default"])
    yield api.url
    worker.stop()
    api.stop()


def test_seed_example_flagged_and_plain_sentences_not(bundled_stack):
    response = requests.post(bundled_stack + "/generate", json={"inputs": [SEED, *PLAIN], "wait": 30}, timeout=40)
    assert response.status_code == 200, response.text
    seed, *plain = response.json()["results"]
    assert seed["flagged"], seed
    assert seed["categories"]["hate"], seed
    for text, result in zip(PLAIN, plain):
        assert not result["flagged"], (text, result)


def test_original_single_text_form_flags_the_seed(bundled_stack):
    job = requests.post(bundled_stack + "/generate", json={"input_text": SEED, "wait": 30}, timeout=40).json()
    assert job["status"] == "succeeded" and job["results"][0]["flagged"]


def test_a_harmful_sentence_after_a_long_harmless_paragraph_is_flagged(bundled_stack):
    """The worker reads past the trained length (64 tokens) in windows: a polite first paragraph hides nothing."""
    paragraph = ("The community garden on Elm Street opened its spring season this weekend, and volunteers spent "
                 "the morning planting tomatoes, peppers and herbs along the new raised beds. Children painted "
                 "signs for each row while their parents shared coffee and talked about the summer festival. ")
    texts = [paragraph * 3 + SEED, paragraph * 3]
    response = requests.post(bundled_stack + "/generate", json={"inputs": texts, "wait": 30}, timeout=40)
    assert response.status_code == 200, response.text
    hidden, plain = response.json()["results"]
    assert hidden["flagged"] and hidden["categories"]["hate"], hidden
    assert not plain["flagged"], plain
