#!/bin/sh
# Ray head node: the GCS that the API (the Tune driver) and every ray-worker join.
#
# Every setting comes from the environment, so the same script runs as a container
# command (docker-compose.yml) and as a plain process (tests/test_cluster.py).
#
#   PHASETUNE_RAY_PORT                  GCS port                          (default 6390;
#                                       6379 is Ray's default and Redis's port)
#   PHASETUNE_RAY_NODE_IP               IP this node advertises           (default: Ray's guess)
#   PHASETUNE_NODE_NUM_CPUS             CPUs this node offers to trials   (default: all it sees)
#   PHASETUNE_NODE_NUM_GPUS             GPUs this node offers to trials   (default: all it sees)
#   PHASETUNE_RAY_OBJECT_STORE_MEMORY   object store size in bytes        (default: Ray's)
#   PHASETUNE_RAY_TEMP_DIR              Ray's temp/session directory      (default: /tmp/ray)
#   PHASETUNE_RAY_INCLUDE_DASHBOARD     start Ray's own dashboard (true/false, default false)
#   PHASETUNE_RAY_DASHBOARD_HOST/PORT   where Ray's dashboard listens     (0.0.0.0 / 8265)
#   PHASETUNE_RAY_CLIENT_SERVER_PORT    Ray client server port (needs ray[client]; default:
#                                       Ray's 10001 when ray[client] is installed)
#   PHASETUNE_RAY_NODE_MANAGER_PORT, PHASETUNE_RAY_OBJECT_MANAGER_PORT,
#   PHASETUNE_RAY_DASHBOARD_AGENT_LISTEN_PORT, PHASETUNE_RAY_DASHBOARD_AGENT_GRPC_PORT,
#   PHASETUNE_RAY_RUNTIME_ENV_AGENT_PORT, PHASETUNE_RAY_METRICS_EXPORT_PORT,
#   PHASETUNE_RAY_MIN_WORKER_PORT, PHASETUNE_RAY_MAX_WORKER_PORT
#                                       fixed ports (needed when nodes share a host or
#                                       a firewall; default: Ray's). Keep them outside the
#                                       worker port range (10002-19999 unless set).
#   PHASETUNE_RAY_EXTRA_ARGS            appended verbatim to `ray start`
#   RAY_BIN                             the ray executable                (default: ray on PATH)
#
# The script ends in `exec ray start --head --block`, so the PID of this script is the PID
# of the process that owns the node: SIGTERM stops the node (Ray drains it first).
set -eu

RAY_BIN="${RAY_BIN:-ray}"
set -- --head --block --disable-usage-stats \
    --port="${PHASETUNE_RAY_PORT:-6390}" \
    --include-dashboard="${PHASETUNE_RAY_INCLUDE_DASHBOARD:-false}"

if [ "${PHASETUNE_RAY_INCLUDE_DASHBOARD:-false}" = "true" ]; then
    set -- "$@" --dashboard-host="${PHASETUNE_RAY_DASHBOARD_HOST:-0.0.0.0}" \
        --dashboard-port="${PHASETUNE_RAY_DASHBOARD_PORT:-8265}"
elif [ -n "${PHASETUNE_RAY_DASHBOARD_PORT:-}" ]; then
    # Ray runs a minimal dashboard process even without the UI; keep it off a taken 8265.
    set -- "$@" --dashboard-port="$PHASETUNE_RAY_DASHBOARD_PORT"
fi

. "$(dirname "$0")/ray-node-args.sh"
. "$(dirname "$0")/ray-auth.sh"
opt ray-client-server-port "${PHASETUNE_RAY_CLIENT_SERVER_PORT:-}"

# `ray start` writes ray_current_cluster once this node has registered with the GCS; ray-health.sh waits for it.
# One left by an earlier start of this container would say "up" too early.
rm -f "${PHASETUNE_RAY_TEMP_DIR:-/tmp/ray}/ray_current_cluster"

# ARGS and PHASETUNE_RAY_EXTRA_ARGS hold no spaces inside one value: split on purpose.
# shellcheck disable=SC2086
exec "$RAY_BIN" start "$@" $ARGS ${PHASETUNE_RAY_EXTRA_ARGS:-}
