"""The training script runs end to end on a tiny slice of the data."""

import json
import os
import subprocess
import sys

import pytest

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS_DIR = os.environ.get("DATASETS_DIR", os.path.join(PROJECT_ROOT, "..", "shared", "datasets"))


@pytest.mark.skipif(not os.path.isdir(DATASETS_DIR), reason="shared datasets not available")
def test_training_smoke_run_writes_weights_and_metrics(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "model.train", DATASETS_DIR, "--limit", "48", "--epochs", "1",
         "--max-steps", "2", "--output", str(tmp_path)],
        cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=600,
    )
    for name in ("weights.safetensors", "model.json", "metrics.json", "SHA256SUMS"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    labels = {"hate", "harassment", "violence", "self-harm", "sexual"}
    assert set(metrics["thresholds"]) == labels
    assert set(metrics["fp16"]["test"]) == labels
    assert metrics["fp16"]["required_checks"]["total"] == 5
    assert metrics["training"]["steps"] == 2
