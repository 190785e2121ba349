#!/bin/sh
# The ray-head health check (docker-compose.yml): healthy once the head node has registered with its GCS (a
# worker that joins a GCS without a registered head fails: "No node info found for head node"), and the GCS
# answers `ray health-check` with the cluster's Ray token. A health check runs through `docker exec`: it gets the
# container's environment, not what ray-head.sh exported, so it reads the token itself (ray-auth.sh).
#
#   PHASETUNE_RAY_PORT, PHASETUNE_RAY_TEMP_DIR, PHASETUNE_RAY_AUTH_TOKEN_FILE, RAY_BIN   as in ray-head.sh
set -eu

# Written by `ray start` after the node registered (ray-head.sh removes a stale one before starting).
if [ ! -s "${PHASETUNE_RAY_TEMP_DIR:-/tmp/ray}/ray_current_cluster" ]; then
    echo "ray-health: the head node has not registered yet" >&2
    exit 1
fi
. "$(dirname "$0")/ray-auth.sh"
exec "${RAY_BIN:-ray}" health-check --address "127.0.0.1:${PHASETUNE_RAY_PORT:-6390}"
