# Sourced by docker/base-image.sh, build-image.sh and image-test.sh: which container engine runs, and podman's
# settings for this host. ENGINE=docker|podman chooses; by default Docker when its engine answers, else podman.
engine="${ENGINE:-}"
if [[ -z "${engine}" ]]; then
  if command -v docker > /dev/null && docker info > /dev/null 2>&1; then
    engine=docker
  elif command -v podman > /dev/null; then
    engine=podman
  else
    echo "no container engine: install Docker, or podman (Debian: apt-get install podman runc)" >&2
    exit 2
  fi
fi
export ENGINE="${engine}"

# podman_rlimits IMAGE: start one container of IMAGE; if podman cannot (the host refuses the rlimits podman
# sets by default), use docker/containers.conf from here on, and in every script started from this one.
podman_rlimits() {
  if [[ "${engine}" != podman || -n "${CONTAINERS_CONF:-}" ]]; then return 0; fi
  if ! podman run --rm --network none "$1" true > /dev/null 2>&1; then
    export CONTAINERS_CONF="${PWD}/docker/containers.conf"
    echo "podman cannot set its default rlimits here: using docker/containers.conf (default_ulimits = [])"
  fi
}
