#!/bin/sh
# The phasetune API: uvicorn serving the FastAPI app (`phasetune serve`).
#
#   PHASETUNE_API_HOST          interface to bind             (default 0.0.0.0)
#   PHASETUNE_API_PORT          port to bind                  (default 8000)
#   PHASETUNE_API_JOIN_RAY      true: first join the Ray cluster at PHASETUNE_RAY_ADDRESS as a
#                               node with no CPUs or GPUs (default false). A Ray driver needs a
#                               raylet on its own host: in a container of its own the API has
#                               none, so docker-compose.yml sets this. On a host that already
#                               runs a Ray node, leave it false. The node's settings are
#                               ray-worker.sh's (PHASETUNE_RAY_TEMP_DIR, ..._NODE_IP, ports).
#   PHASETUNE_STORAGE_URL       SQLAlchemy URL of the Optuna storage (read by phasetune)
#   PHASETUNE_RAY_ADDRESS       host:port of the Ray head's GCS; empty starts a local Ray
#                               head (read by phasetune)
#   PHASETUNE_START_DASHBOARD   whether phasetune starts its own optuna-dashboard (read by
#                               phasetune; false in the cluster, where `dashboard` runs it)
#   PHASETUNE_DASHBOARD_URL     the dashboard address shown to users (read by phasetune)
#   PHASETUNE_RESULTS_DIR       where Ray Tune writes trial results (read by phasetune; must be
#                               the same shared path on every Ray node)
#   PHASETUNE_API_PUBLISHED_ON  the host address the API's port is published on (compose passes
#                               PHASETUNE_BIND_ADDRESS, default 127.0.0.1). Loopback: only this
#                               host reaches the API, which is served without tokens (--insecure,
#                               as `serve` on loopback is). Anything else: tokens are required,
#                               and `serve` refuses to start until one exists
#                               (`docker compose run --rm api phasetune token create --scope admin`).
#   PHASETUNE_BIN               the phasetune executable      (default: phasetune on PATH)
set -eu

. "$(dirname "$0")/ray-auth.sh"

case "${PHASETUNE_API_PUBLISHED_ON:-127.0.0.1}" in
    127.*|localhost|::1) insecure="--insecure" ;;
    *) insecure="" ;;
esac

if [ "${PHASETUNE_API_JOIN_RAY:-false}" = "true" ]; then
    if [ -z "${PHASETUNE_RAY_ADDRESS:-}" ]; then
        echo "api: PHASETUNE_API_JOIN_RAY=true needs PHASETUNE_RAY_ADDRESS" >&2
        exit 2
    fi
    PHASETUNE_NODE_NUM_CPUS=0 PHASETUNE_NODE_NUM_GPUS=0 PHASETUNE_RAY_BLOCK=false \
        "$(dirname "$0")/ray-worker.sh"
fi

# shellcheck disable=SC2086 # $insecure is one flag or none
exec "${PHASETUNE_BIN:-phasetune}" serve \
    --host "${PHASETUNE_API_HOST:-0.0.0.0}" \
    --port "${PHASETUNE_API_PORT:-8000}" $insecure
