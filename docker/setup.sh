#!/bin/sh
# Build steps both Dockerfiles share, for any Debian-based PYTHON_IMAGE (python:3.11-slim, or a
# plain Debian 12 image whose python3 is 3.11 and comes from apt):
#   setup.sh python        python3 present (apt-get installs it when the base image has none)
#   setup.sh venv          python3 with its venv module, then a virtual environment in /opt/venv
#   setup.sh pip ARGS...   pip install into /opt/venv; trusts build-extras/ca.crt and finds wheels
#                          in build-extras/wheels/ when those are there (docker/build-extras/README.md)
set -eu
extras=/tmp/build-extras

apt_install() {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  rm -rf /var/lib/apt/lists/*
}

case "$1" in
  python)
    command -v python3 >/dev/null || apt_install python3
    ;;
  venv)
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3 python3-venv
    python3 -m venv /opt/venv
    ;;
  pip)
    shift
    if [ -f "$extras/ca.crt" ]; then export PIP_CERT="$extras/ca.crt"; fi
    if [ -d "$extras/wheels" ]; then export PIP_FIND_LINKS="$extras/wheels"; fi
    exec /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check "$@"
    ;;
  *)
    echo "usage: $0 python|venv|pip ARGS..." >&2
    exit 2
    ;;
esac
