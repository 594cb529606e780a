#!/usr/bin/env bash
# A Debian 12 (bookworm) base image with Python 3.11 from Debian's own packages, for machines that cannot pull
# python:3.11-slim-bookworm from a registry but can reach a Debian mirror: mmdebstrap writes the root file
# system, the container engine imports it. Debian 12's python3.11 (3.11.2) meets requires-python.
#   docker/base-image.sh [TAG]        (default localhost/genart-base:bookworm-py311)
# It does nothing when the image exists. It needs mmdebstrap (apt-get install mmdebstrap) and root.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${1:-localhost/genart-base:bookworm-py311}"
# shellcheck source=docker/engine.sh
source docker/engine.sh
mirror="${DEBIAN_MIRROR:-http://deb.debian.org}"

if "${engine}" image inspect "${tag}" > /dev/null 2>&1; then
  echo "base image ${tag} exists"
  exit 0
fi
if ! command -v mmdebstrap > /dev/null; then
  echo "building the base image needs mmdebstrap: apt-get install mmdebstrap" >&2
  exit 2
fi

workdir="$(mktemp -d)"
trap 'rm -rf "${workdir}"' EXIT
# Only what the Dockerfile's base stage does not install itself; no documentation, manuals or apt lists.
mmdebstrap --quiet --variant=apt --include=python3.11,python3.11-venv,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "${workdir}/rootfs.tar" "deb ${mirror}/debian bookworm main" \
  "deb ${mirror}/debian bookworm-updates main" "deb ${mirror}/debian-security bookworm-security main"
"${engine}" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3.11"]' \
  --message "Debian 12 with python3.11, from ${mirror} by docker/base-image.sh" "${workdir}/rootfs.tar" "${tag}"
podman_rlimits "${tag}"
"${engine}" run --rm --network none "${tag}" python3.11 --version
