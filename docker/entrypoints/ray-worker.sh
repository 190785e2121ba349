#!/bin/sh
# Ray worker node: joins the head and advertises its CPUs and GPUs to the cluster.
#
#   PHASETUNE_RAY_ADDRESS               host:port of the head's GCS       (default ray-head:6390)
#   PHASETUNE_RAY_WAIT_SECONDS          how long to wait for the head     (default 120)
#   PHASETUNE_RAY_NODE_IP               IP this node advertises; set it on a machine with
#                                       several interfaces                (default: Ray's guess)
#   PHASETUNE_NODE_NUM_CPUS             CPUs this node offers             (default: all it sees)
#   PHASETUNE_NODE_NUM_GPUS             GPUs this node offers             (default: all it sees)
#   PHASETUNE_RAY_OBJECT_STORE_MEMORY, PHASETUNE_RAY_TEMP_DIR,
#   PHASETUNE_RAY_NODE_MANAGER_PORT, PHASETUNE_RAY_OBJECT_MANAGER_PORT,
#   PHASETUNE_RAY_DASHBOARD_AGENT_LISTEN_PORT, PHASETUNE_RAY_DASHBOARD_AGENT_GRPC_PORT,
#   PHASETUNE_RAY_RUNTIME_ENV_AGENT_PORT, PHASETUNE_RAY_METRICS_EXPORT_PORT,
#   PHASETUNE_RAY_MIN_WORKER_PORT, PHASETUNE_RAY_MAX_WORKER_PORT, PHASETUNE_RAY_EXTRA_ARGS
#                                       as in ray-head.sh
#   PHASETUNE_RAY_BLOCK                 true: stay in the foreground (--block); false: return
#                                       once the node is up (api.sh uses this)   (default true)
#   RAY_BIN                             the ray executable                (default: ray on PATH)
#   PYTHON_BIN                          python used for the wait loop     (default: python3,
#                                       else python)
#
# Ends in `exec ray start --address=... --block`: the script's PID owns the node.
# Killing that process tree is what "losing a node" means to the cluster.
set -eu

RAY_BIN="${RAY_BIN:-ray}"
ADDRESS="${PHASETUNE_RAY_ADDRESS:-ray-head:6390}"
WAIT="${PHASETUNE_RAY_WAIT_SECONDS:-120}"
if [ -z "${PYTHON_BIN:-}" ]; then
    if command -v python3 >/dev/null 2>&1; then PYTHON_BIN=python3; else PYTHON_BIN=python; fi
fi

# Wait until the head's GCS port accepts connections (the head may still be starting, or
# on another machine that comes up later).
"$PYTHON_BIN" - "$ADDRESS" "$WAIT" <<'PY'
import socket, sys, time
host, _, port = sys.argv[1].rpartition(":")
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"ray-worker: Ray head {sys.argv[1]} unreachable: {exc}")
        time.sleep(1)
PY

. "$(dirname "$0")/ray-node-args.sh"
. "$(dirname "$0")/ray-auth.sh"

BLOCK="--block"
if [ "${PHASETUNE_RAY_BLOCK:-true}" = "false" ]; then
    BLOCK=""
fi

# shellcheck disable=SC2086
exec "$RAY_BIN" start --address="$ADDRESS" $BLOCK --disable-usage-stats $ARGS \
    ${PHASETUNE_RAY_EXTRA_ARGS:-}
