#!/usr/bin/env bash
# A local Debian 12 base image for building the project's images where no registry is reachable:
# debootstrap's minbase (its python3 is 3.11) imported into Docker. The root filesystem tarball is
# cached under var/ (git-ignored), so only the first run downloads packages.
#
#   scripts/containers/debian_base_image.sh [IMAGE]      # default: moderation-debian-base:bookworm
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-moderation-debian-base:bookworm}
tarball=var/docker/debian-bookworm-minbase.tar
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$image" >/dev/null 2>&1; then
  exit 0
fi
if [[ ! -s $tarball ]]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  rootfs=$(mktemp -d /tmp/debian-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap --variant=minbase bookworm (about a minute)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  # Same mirror the host uses, and no apt caches in the image.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  mkdir -p "$(dirname "$tarball")"
  tar -C "$rootfs" -c . > "$tarball.tmp"
  mv "$tarball.tmp" "$tarball"
fi
docker import "$tarball" "$image" >/dev/null
echo "imported $image from $tarball"
