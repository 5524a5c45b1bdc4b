"""Every environment's render goes through `kubectl kustomize` (item 7): Argo CD's and Flux's Helm
post-renderers and any kustomize overlay parse the manifests strictly, so a mapping that repeats a key
(a pod template's labels, twice app.kubernetes.io/name) or two objects of one kind and name fail there
although `helm template` and the API server's last-wins parsing let them through.

kubectl 1.32 (kustomize v5.5) comes from scripts/helm.sh beside helm (sha256-checked); Debian 12's
kubectl (package kubernetes-client, 1.20) bundles kustomize v2, too old to stand for these tools.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from scripts.chart import ENVIRONMENTS, kubectl_binary, render_text


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; this loader refuses them, as kustomize does."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = {key for key in keys if keys.count(key) > 1}
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"repeated keys {sorted(repeated)}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def kustomize(manifests: str, tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "chart.yaml").write_text(manifests)
    (tmp_path / "kustomization.yaml").write_text("resources: [chart.yaml]\nlabels:\n- pairs: {overlay: test}\n")
    return subprocess.run([kubectl_binary(), "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_kubectl_kustomize_takes_the_render(environment, tmp_path):
    manifests = render_text(environment, {"metrics.prometheusOperator": True, "webhooks.allowedHosts": "hooks.test",
                                          "secrets.webhookSecret": "s"} if environment == "dev" else {})
    result = kustomize(manifests, tmp_path)
    assert result.returncode == 0, f"kubectl kustomize refused the {environment} render:\n{result.stderr}"
    rendered = [doc for doc in yaml.safe_load_all(manifests) if doc]
    out = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in out) == \
        sorted((d["kind"], d["metadata"]["name"]) for d in rendered)
    assert all(doc["metadata"]["labels"]["overlay"] == "test" for doc in out)
    print(f"{environment}: kubectl kustomize kept {len(out)} objects")


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_no_mapping_repeats_a_key(environment):
    for doc in yaml.load_all(render_text(environment), Loader=UniqueKeyLoader):
        assert doc is None or doc["kind"]


def test_the_checks_catch_a_repeated_label(tmp_path):
    bad = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  labels:\n"
           "    app.kubernetes.io/name: a\n    app.kubernetes.io/name: a\n")
    result = kustomize(bad, tmp_path)
    assert result.returncode != 0 and "already defined" in result.stderr, result.stderr
    with pytest.raises(yaml.constructor.ConstructorError, match="repeated keys"):
        yaml.load(bad, Loader=UniqueKeyLoader)
