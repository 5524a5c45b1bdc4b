"""The accurate model and the cascade as a user gets them: `make model-cascade`, then the README's
"Choosing a model" section run as written (`make run` with MODELS naming the cascade, and its curl, whose
answer must carry the stage that decided each text).

Run by `make test-cascade` (MODERATION_CASCADE_TESTS=1, after `make model-cascade` has installed the
encoder's packages and built both folders), not by `make test`, which never needs the 400 MB encoder.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import requests

from model.accurate.build import DEFAULT_OUTPUT_DIR as ACCURATE_DIR
from model.accurate.modeling import ARTIFACT_DIR
from model.build import BUILT_WEIGHTS_NAME, sha256_of
from tests.support import ROOT, Proc, wait_until
from tests.test_readme import (
    README,
    assert_shape,
    commands_with_samples,
    parse_sample,
    section,
    service_env,
    shell_blocks,
    stop_group,
)

pytestmark = pytest.mark.skipif(os.environ.get("MODERATION_CASCADE_TESTS") != "1",
                                reason="run by `make test-cascade` (needs `make model-cascade`)")


def choosing_a_model() -> tuple[str, list[tuple[str, str]]]:
    """The section's command that starts the cascade, and its requests with their sample answers."""
    blocks = shell_blocks(section(README.read_text(), "Choosing a model"))
    assert len(blocks) == 2, "the section is one block that starts the cascade, then one of requests"
    start = [command for command, _ in commands_with_samples(blocks[0])][-1]
    return start.split("#")[0].strip(), commands_with_samples(blocks[1])


def test_the_accurate_model_builds_byte_identical():
    with open(os.path.join(ARTIFACT_DIR, "SHA256SUMS")) as f:
        expected = dict(reversed(line.split()) for line in f if line.strip())
    assert sha256_of(os.path.join(ACCURATE_DIR, "model.safetensors")) == expected[BUILT_WEIGHTS_NAME]


def test_the_readme_serves_the_cascade_and_says_which_stage_decided(tmp_path):
    start, requests_shown = choosing_a_model()
    match = re.fullmatch(r"((?:\w+=\S+ )+)make run", start)
    assert match, f"the section starts the cascade with {start!r}; this test runs `make run` with those settings"
    env = service_env(tmp_path)
    env.update(dict(pair.split("=", 1) for pair in shlex.split(match.group(1))))
    proc = Proc(["make", "--no-print-directory", "--old-file=.venv/.installed-run", "run"], env,
                tmp_path / "make-run.log")
    url = f"http://127.0.0.1:{env['PORT']}"

    def ready():
        assert proc.alive(), f"`make run` exited:\n{proc.log_tail()}"
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    try:
        wait_until(ready, timeout=300, interval=0.5, what=lambda: f"the cascade to be ready:\n{proc.log_tail()}")
        stages = []
        for command, sample in requests_shown:
            command = command.replace("localhost:5000", url.removeprefix("http://"))
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (command, done.stderr)
            answer = json.loads(done.stdout)
            assert_shape(parse_sample(sample), answer, command)
            stages += [result["stage"] for result in answer.get("results") or []]
        assert set(stages) == {"fast", "accurate"}, stages  # the sample shows one text settled by each stage
        models = requests.get(url + "/models", timeout=10).json()
        assert "moderation-cascade" in json.dumps(models)
        worker_metrics = requests.get(f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics", timeout=10).text
        counted = {stage: sum(float(line.rsplit(" ", 1)[1]) for line in worker_metrics.splitlines()
                              if line.startswith("moderation_cascade_windows_total") and f'stage="{stage}"' in line)
                   for stage in ("fast", "accurate")}
        assert counted["fast"] >= len(stages) and counted["accurate"] >= 1, counted
    finally:
        stop_group(proc)


def test_the_accurate_training_runs_end_to_end(tmp_path):
    """`python -m model.accurate.train` as a smoke run: cache, train, calibrate, write an artifact that builds."""
    datasets = os.environ.get("DATASETS_DIR", str(ROOT.parent / "shared" / "datasets"))
    if not os.path.isdir(datasets):
        pytest.skip("the shared datasets are not on this machine")
    done = subprocess.run([sys.executable, "-m", "model.accurate.train", datasets, "--steps", "2", "--limit", "64",
                           "--output", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "model.json").read_text())
    assert set(info["thresholds"]) == {"hate", "harassment", "violence", "self-harm", "sexual"}
    assert info["calibration"]["method"] == "platt" and info["first_trained_layer"] == 10
    assert (tmp_path / "SHA256SUMS").read_text().count("\n") == 2
