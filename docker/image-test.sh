#!/usr/bin/env bash
# `make image-test`: the genart image (make image) started for real, with the demo artefacts mounted.
#   1. the compose file passes `podman-compose config` (or `docker compose config`);
#   2. PostgreSQL 15 built from Debian packages on the image's own base (docker/postgres/Dockerfile);
#   3. on one container network: PostgreSQL, the Ray head deploying serve_config.yaml (`head`), MLflow's server
#      on its own database, and the web demo (`genart ui`), each from its image as the compose file runs it;
#   4. checks: /health, one /predict over HTTP (its JSON printed), the row it wrote in PostgreSQL, the user the
#      server processes run as (never root), the image's HEALTHCHECK, MLflow's /health, the demo's port.
# Grafana and Prometheus do not run here: their images come only from a registry (Prometheus is a Debian
# package, but genart's Prometheus adds nothing to what /metrics answers).
# IMAGE (default genart:cpu), ENGINE (podman or docker), KEEP=1 leaves the containers running.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-genart:cpu}"
# shellcheck source=docker/engine.sh
source docker/engine.sh
run() { "${engine}" "$@"; }
# A container's health check, run now (podman), or its latest status (Docker runs them on their interval).
healthy() {
  if [[ "${engine}" == podman ]]; then
    podman healthcheck run "$1"
  else
    [[ "$(docker inspect --format '{{.State.Health.Status}}' "$1")" == healthy ]]
  fi
}
say() { echo "image-test: $*"; }
fail() {
  echo "image-test: FAILED: $*" >&2
  exit 1
}

prefix="genart-it-$$"
network="${prefix}"
password="it$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
api_port="$(free_port)"
ui_port="$(free_port)"

cleanup() {
  local status=$?
  if [[ "${status}" -ne 0 ]]; then
    for container in head ui mlflow postgres; do
      if run inspect "${prefix}-${container}" > /dev/null 2>&1; then
        echo "---- last lines of ${prefix}-${container}'s log" >&2
        run logs --tail 40 "${prefix}-${container}" >&2 2>&1 || true
      fi
    done
  fi
  if [[ "${KEEP:-0}" == 1 ]]; then
    say "KEEP=1: containers ${prefix}-* and network ${network} left running"
    return
  fi
  for container in ui mlflow head postgres; do run rm -f "${prefix}-${container}" > /dev/null 2>&1 || true; done
  run network rm "${network}" > /dev/null 2>&1 || true
}
trap cleanup EXIT

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 3 s until it succeeds.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" > /dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "${what}: not ready after ${seconds} s"
    sleep 3
  done
  say "${what}: ready after $((SECONDS - started)) s"
}

run image inspect "${image}" > /dev/null 2>&1 || fail "no image ${image}: run make image first"
podman_rlimits "${image}"
base="$(run image inspect --format '{{index .Config.Labels "org.opencontainers.image.base.name"}}' "${image}")"
say "${image}: $(($(run image inspect --format '{{.Size}}' "${image}") / 1000000)) MB, built on ${base}"

# ---- 1. the compose file, interpolated and merged by a compose implementation ------------------------------
compose_env="$(mktemp)"
printf 'POSTGRES_PASSWORD=%s\nGF_ADMIN_PASSWORD=%s\n' "${password}" "${password}" > "${compose_env}"
if docker compose version > /dev/null 2>&1; then
  compose=(docker compose)
else
  compose=("$(command -v podman-compose || echo .venv/bin/podman-compose)")
fi
"${compose[@]}" --env-file "${compose_env}" -f docker/docker-compose.yml config > /dev/null \
  || fail "${compose[*]} config rejects docker/docker-compose.yml"
rm -f "${compose_env}"
say "docker/docker-compose.yml passes ${compose[*]} config"

# ---- 2. the demo artefacts and PostgreSQL -------------------------------------------------------------------
for artifact in demo-lite0 demo-residual demo-ensemble; do
  if [[ ! -d "artifacts/${artifact}" ]]; then
    say "no artifacts/${artifact}: training the demo models as make demo does"
    make --no-print-directory demo-artifacts
    break
  fi
done

pg_image="localhost/genart-postgres:15"
if ! run image inspect "${pg_image}" > /dev/null 2>&1; then
  say "building ${pg_image} from Debian packages on ${base}"
  build_args=()
  if [[ "${engine}" == podman ]]; then build_args=(--format docker --network host); fi
  run build "${build_args[@]}" -f docker/postgres/Dockerfile -t "${pg_image}" \
    --build-arg "BASE_IMAGE=${base}" docker/postgres
fi

run network create "${network}" > /dev/null
started=${SECONDS}
run run -d --name "${prefix}-postgres" --network "${network}" --network-alias postgres \
  -e POSTGRES_USER=genart -e "POSTGRES_PASSWORD=${password}" -e POSTGRES_DB=genart \
  -v "${PWD}/docker/postgres/init-databases.sql:/docker-entrypoint-initdb.d/10-databases.sql:ro" \
  "${pg_image}" > /dev/null
wait_for 60 "PostgreSQL (${pg_image})" healthy "${prefix}-postgres"

# Containers reach each other by the names the compose file uses (network aliases).
database="postgresql+psycopg://genart:${password}@postgres:5432"

# ---- 3. the Ray head: serve_config.yaml with the demo artefacts mounted -------------------------------------
started=${SECONDS}
run run -d --name "${prefix}-head" --network "${network}" --network-alias ray-head --shm-size 8g \
  -p "127.0.0.1:${api_port}:8000" -v "${PWD}/artifacts:/app/artifacts:ro" \
  -e "DATABASE_URL=${database}/genart" "${image}" head > /dev/null
wait_for 600 "the API in ${prefix}-head (/health)" curl -fsS "http://127.0.0.1:${api_port}/health"
say "GET /health: $(curl -fsS "http://127.0.0.1:${api_port}/health")"

sample="$(find data/sample -path '*/val/ai/*' -type f 2> /dev/null | sort | head -1)"
[[ -n "${sample}" ]] || fail "no sample image under data/sample: run make data"
answer="$(curl -fsS -F "file=@${sample}" "http://127.0.0.1:${api_port}/predict")" \
  || fail "POST /predict failed"
say "POST /predict (${sample}): ${answer}"
request_id="$(python3 -c 'import json, sys; a = json.loads(sys.argv[1]); assert a["label"] in ("ai", "nature"); print(a["request_id"])' "${answer}")" \
  || fail "the /predict answer has no label or request_id"

row_query="SELECT request_id, label, round(probability::numeric, 4), source FROM predictions WHERE request_id = '${request_id}'"
row() { run exec "${prefix}-postgres" psql -U genart -d genart -tAc "${row_query}"; }
has_row() { [[ -n "$(row)" ]]; }
started=${SECONDS}
wait_for 60 "the prediction's row in PostgreSQL" has_row
say "PostgreSQL predictions row: $(row)"

# Every process in the container, and the HTTP proxy and replicas among them, as (uid, command).
processes="$(run exec "${prefix}-head" python -c '
import pathlib
for p in sorted(pathlib.Path("/proc").glob("[0-9]*"), key=lambda p: int(p.name)):
    try:
        uid = next(l.split()[1] for l in (p / "status").read_text().splitlines() if l.startswith("Uid:"))
        cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (OSError, StopIteration):
        continue
    if cmd:
        print(uid, cmd[:100])
')"
echo "${processes}" | grep -E 'ProxyActor|ServeReplica|gcs_server' | sed 's/^/image-test:   uid /'
server_uid="$(echo "${processes}" | awk '/ProxyActor/ {print $1; exit}')"
[[ -n "${server_uid}" ]] || fail "no Serve ProxyActor process in ${prefix}-head"
if echo "${processes}" | awk '$1 == 0 {found = 1} END {exit !found}'; then
  fail "a process in ${prefix}-head runs as root"
fi
say "the HTTP server (Serve's ProxyActor) runs as uid ${server_uid}; $(echo "${processes}" | wc -l) processes, none as root"

healthy "${prefix}-head" > /dev/null || fail "HEALTHCHECK of ${prefix}-head is unhealthy"
say "HEALTHCHECK of ${prefix}-head: healthy ($(run image inspect --format '{{json .Config.Healthcheck.Test}}' "${image}"))"

# ---- 4. MLflow's server and the web demo, from the same image -----------------------------------------------
started=${SECONDS}
run run -d --name "${prefix}-mlflow" --network "${network}" --network-alias mlflow \
  --health-cmd 'curl -fsS -o /dev/null http://127.0.0.1:5000/health' "${image}" \
  mlflow server --host 0.0.0.0 --port 5000 --backend-store-uri "${database}/mlflow" \
  --artifacts-destination /tmp/mlflow --allowed-hosts "mlflow,mlflow:5000,localhost,127.0.0.1" > /dev/null
wait_for 240 "MLflow's server on PostgreSQL (its healthcheck)" healthy "${prefix}-mlflow"

started=${SECONDS}
run run -d --name "${prefix}-ui" --network "${network}" -p "127.0.0.1:${ui_port}:8501" \
  --health-cmd 'curl -fsS -o /dev/null http://127.0.0.1:8501/_stcore/health' "${image}" \
  genart ui --api http://ray-head:8000 --host 0.0.0.0 > /dev/null
wait_for 120 "the web demo in ${prefix}-ui" curl -fsS "http://127.0.0.1:${ui_port}/_stcore/health"
healthy "${prefix}-ui" > /dev/null || fail "the UI container's healthcheck is unhealthy"
run exec "${prefix}-ui" curl -fsS -o /dev/null http://ray-head:8000/health \
  || fail "the UI container cannot reach the API at http://ray-head:8000"
say "the web demo answers on port ${ui_port} (/_stcore/health: $(curl -fsS "http://127.0.0.1:${ui_port}/_stcore/health")) and reaches the API at http://ray-head:8000"

say "passed: PostgreSQL, the Ray head with the Serve app, MLflow and the web demo ran; Prometheus and Grafana did not (no registry)"
