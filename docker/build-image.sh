#!/usr/bin/env bash
# `make image`: build docker/Dockerfile with Docker, or with podman where no Docker engine answers.
#   IMAGE            the tag (default genart:cpu; podman names it localhost/genart:cpu)
#   BASE             the base image; by default python:3.11-slim-bookworm where it can be pulled, otherwise a
#                    Debian 12 base built here from Debian packages (docker/base-image.sh)
#   EXTRAS           pyproject extras to add (default ui: the same image runs `genart ui`)
#   TORCH_INDEX_URL  an index with CPU builds of the torch pins (default PyTorch's); empty: pyproject's PyPI
#                    wheels, with their CUDA libraries; unreachable: see below
#   TORCH_PINS       torch and torchvision requirements replacing pyproject's (e.g. "torch==2.13.0+cpu
#                    torchvision==0.28.0"); by default only where TORCH_INDEX_URL is unreachable
#   ENGINE           docker or podman (default: docker when its engine answers, else podman)
# With podman, the build runs on the host's network and sees the host's pip configuration (/etc/pip.conf,
# /etc/xdg/pip, ~/.config/pip), its CA certificates and the local package folders that configuration names,
# read-only: pip inside the build then installs from wherever pip on the host does. podman passes the host's
# proxy variables to the build itself.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-genart:cpu}"
extras="${EXTRAS-ui}"
torch_index="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"
official="docker.io/library/python:3.11-slim-bookworm"
local_base="localhost/genart-base:bookworm-py311"

# shellcheck source=docker/engine.sh
source docker/engine.sh

base="${BASE:-}"
if [[ -z "${base}" ]]; then
  if "${engine}" image inspect "${official}" > /dev/null 2>&1 \
    || timeout 120 "${engine}" pull -q "${official}" > /dev/null 2>&1; then
    base="${official}"
  else
    echo "make image: cannot pull ${official}; building a Debian 12 base from Debian packages instead"
    docker/base-image.sh "${local_base}"
    base="${local_base}"
  fi
fi
podman_rlimits "${base}"

# The host's local pip folders (find-links, file:// indexes and the folder above a .../simple index, whose
# pages link to ../../files): podman's build sees them read-only.
pip_folders=()
config="$(python3 -m pip config list 2> /dev/null || true)"
for word in ${config//[\'=]/ } ${PIP_FIND_LINKS:-}; do
  path="${word#file://}"
  if [[ "${path}" == /* && -d "${path}" ]]; then
    pip_folders+=("${path}")
    if [[ "$(basename "${path}")" == simple ]]; then pip_folders+=("$(dirname "${path}")"); fi
  fi
done

# torch: CPU builds of pyproject's pins from TORCH_INDEX_URL; where that index is out of reach, the newest CPU
# torch in a local wheel folder with its CPU torchvision (the release made with it, minor + 15), said loudly;
# else pyproject's PyPI wheels with their CUDA libraries (a 7.5 GB image, about 25 GB of disk while building).
torch_pins="${TORCH_PINS:-}"
if [[ -n "${torch_index}" ]] && ! curl -fsS -o /dev/null --max-time 20 "${torch_index%/}/torch/" 2> /dev/null; then
  echo "make image: ${torch_index} is unreachable"
  torch_index=""
  wheel=""
  vision=""
  if [[ "${engine}" == podman && ${#pip_folders[@]} -gt 0 ]]; then  # only podman's build sees these folders
    wheel="$(find "${pip_folders[@]}" -maxdepth 2 -name 'torch-*+cpu-cp311-*.whl' | sort -V | tail -1)"
  fi
  if [[ -n "${wheel}" ]]; then
    version="$(basename "${wheel}" | cut -d- -f2)"
    IFS=. read -r _ minor patch <<< "${version%+cpu}"
    # A CUDA torchvision does not import on a CPU torch ("operator torchvision::nms does not exist"): only a
    # CPU torchvision of the matching release (minor + 15) will do.
    vision="$(find "${pip_folders[@]}" -maxdepth 2 -name "torchvision-0.$((minor + 15)).${patch}+cpu-cp311-*.whl" \
      | head -1)"
  fi
  if [[ -z "${torch_pins}" && -n "${vision}" ]]; then
    torch_pins="torch==${version} torchvision==0.$((minor + 15)).${patch}+cpu"
    pinned="$(python3 docker/requirements_from_pyproject.py pyproject.toml | grep -E '^torch(vision)?==' | xargs)"
    echo "make image: NOTE: no CPU build of ${pinned} within reach; the image gets ${torch_pins} instead" \
      "(${wheel}, ${vision})"
  elif [[ -z "${torch_pins}" ]]; then
    if [[ -n "${wheel}" ]]; then echo "make image: ${wheel} has no CPU torchvision to go with it"; fi
    echo "make image: NOTE: torch comes from pyproject's PyPI wheel, with its CUDA libraries (about 4 GB more)"
  fi
fi

args=(build -f docker/Dockerfile -t "${image}" --build-arg "BASE_IMAGE=${base}" --build-arg "EXTRAS=${extras}"
  --build-arg "TORCH_INDEX_URL=${torch_index}" --build-arg "TORCH_PINS=${torch_pins}")
if [[ "${engine}" == podman ]]; then
  # Docker's format keeps the HEALTHCHECK (OCI images have none); podman reads Dockerfile.dockerignore only
  # when told; the host's network is the one whose proxy, DNS and mirrors pip and apt are configured for.
  args+=(--format docker --ignorefile docker/Dockerfile.dockerignore --network host)
  mounts=(/etc/pip.conf /etc/xdg/pip /etc/ssl/certs "${pip_folders[@]}")
  for path in $(printf '%s\n' "${mounts[@]}" | sort -u); do
    if [[ -e "${path}" ]]; then args+=(-v "${path}:${path}:ro"); fi
  done
  if [[ -d "${HOME}/.config/pip" ]]; then args+=(-v "${HOME}/.config/pip:/root/.config/pip:ro"); fi
fi

echo "make image: ${engine} build of ${image} on ${base}${torch_index:+, CPU torch from ${torch_index}}${torch_pins:+, ${torch_pins}}"
start=${SECONDS}
"${engine}" "${args[@]}" .
size="$("${engine}" image inspect --format '{{.Size}}' "${image}")"
echo "make image: ${image} built in $((SECONDS - start)) s; $((size / 1000000)) MB"
