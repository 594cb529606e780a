#!/usr/bin/env bash
# The genart image's entry point.
#   head    a Ray head (GCS on 6380, never Redis' 6379) that deploys serve_config.yaml and stays up
#   worker  a Ray worker joining RAY_HEAD_ADDRESS (host:6380)
#   other   run it as given (`genart ui --api ...`, `mlflow server ...`, `python jobs/train.py ...`)
# RAY_AUTH_MODE must be the same for the head, every worker and every client (`disabled` or `token`; with
# `token`, give each of them the same RAY_AUTH_TOKEN).
set -euo pipefail

ray_port="${RAY_PORT:-6380}"
cpus=()
if [[ -n "${RAY_NUM_CPUS:-}" ]]; then cpus=(--num-cpus "${RAY_NUM_CPUS}"); fi

# serve_config.yaml binds the proxy to 127.0.0.1 for local use; in a container it must listen on every
# interface, or the published port 8000 reaches nothing.
container_serve_config() {
  python - "${GENART_SERVE_CONFIG:-/app/serve_config.yaml}" /tmp/genart-serve-config.yaml <<'PY'
import sys

import yaml

with open(sys.argv[1]) as f:
    config = yaml.safe_load(f)
config.setdefault("http_options", {})["host"] = "0.0.0.0"
with open(sys.argv[2], "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
PY
  echo /tmp/genart-serve-config.yaml
}

case "${1:-head}" in
  head)
    ray start --head --port "${ray_port}" --dashboard-host 0.0.0.0 --metrics-export-port 8080 \
      --disable-usage-stats "${cpus[@]}" --block &
    ray_pid=$!
    trap 'ray stop; wait "${ray_pid}"' TERM INT
    config="$(container_serve_config)"
    # The dashboard (which `serve deploy` talks to) needs a few seconds after `ray start`.
    for attempt in $(seq 1 60); do
      if serve deploy --address http://127.0.0.1:8265 "${config}"; then break; fi
      kill -0 "${ray_pid}" 2> /dev/null || { echo "ray start exited" >&2; exit 1; }
      if [[ "${attempt}" == 60 ]]; then echo "serve deploy kept failing" >&2; exit 1; fi
      sleep 5
    done
    wait "${ray_pid}"
    ;;
  worker)
    exec ray start --address "${RAY_HEAD_ADDRESS:?set RAY_HEAD_ADDRESS=host:6380}" \
      --metrics-export-port 8080 --disable-usage-stats "${cpus[@]}" --block
    ;;
  *)
    exec "$@"
    ;;
esac
