#!/usr/bin/env bash
# Fill docker/build-extras/ (git-ignored; docker/build-extras/README.md) from this host, for an
# image build where pip needs the host's CA bundle and PyTorch's index is out of reach:
#   ca.crt   <- $PIP_CERT, else /etc/ssl/certs/ca-certificates.crt
#   wheels/  <- the wheels in $PIP_FIND_LINKS (a local folder, e.g. the CPU torch wheel)
set -euo pipefail
cd "$(dirname "$0")/../.."
extras=docker/build-extras
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [[ -f $ca ]]; then
  cp "$ca" "$extras/ca.crt"
fi
if [[ -n ${PIP_FIND_LINKS:-} && -d ${PIP_FIND_LINKS} ]]; then
  mkdir -p "$extras/wheels"
  for wheel in "$PIP_FIND_LINKS"/*.whl; do
    [[ -e $wheel ]] || continue
    target="$extras/wheels/$(basename "$wheel")"
    # A hard link when on the same file system: no copy of a 200 MB wheel.
    [[ -e $target ]] || ln "$wheel" "$target" 2>/dev/null || cp "$wheel" "$target"
  done
fi
ls -A "$extras"
