# Sourced by ray-head.sh and ray-worker.sh: the node flags both roles take, from PHASETUNE_* variables.
# Defines opt() and leaves them in ARGS (values hold no spaces; the caller splits ARGS on purpose).

opt() {  # opt FLAG VALUE: pass --FLAG=VALUE only when VALUE is set
    if [ -n "$2" ]; then
        ARGS="$ARGS --$1=$2"
    fi
}
ARGS=""
opt node-ip-address "${PHASETUNE_RAY_NODE_IP:-}"
opt num-cpus "${PHASETUNE_NODE_NUM_CPUS:-}"
opt num-gpus "${PHASETUNE_NODE_NUM_GPUS:-}"
opt object-store-memory "${PHASETUNE_RAY_OBJECT_STORE_MEMORY:-}"
opt temp-dir "${PHASETUNE_RAY_TEMP_DIR:-}"
opt node-manager-port "${PHASETUNE_RAY_NODE_MANAGER_PORT:-}"
opt object-manager-port "${PHASETUNE_RAY_OBJECT_MANAGER_PORT:-}"
opt dashboard-agent-listen-port "${PHASETUNE_RAY_DASHBOARD_AGENT_LISTEN_PORT:-}"
opt dashboard-agent-grpc-port "${PHASETUNE_RAY_DASHBOARD_AGENT_GRPC_PORT:-}"
opt runtime-env-agent-port "${PHASETUNE_RAY_RUNTIME_ENV_AGENT_PORT:-}"
opt metrics-export-port "${PHASETUNE_RAY_METRICS_EXPORT_PORT:-}"
opt min-worker-port "${PHASETUNE_RAY_MIN_WORKER_PORT:-}"
opt max-worker-port "${PHASETUNE_RAY_MAX_WORKER_PORT:-}"
