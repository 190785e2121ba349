# Sourced by ray-head.sh, ray-worker.sh and api.sh: Ray's token auth, the same token on every node.
#
#   PHASETUNE_RAY_AUTH_TOKEN_FILE  a file holding the cluster's Ray token (migrate.sh makes it once; the
#                                  compose volume `ray-auth` holds it; another machine's worker gets a copy).
#                                  Set: this node requires and sends it (RAY_AUTH_MODE=token). Unset: Ray's
#                                  own RAY_AUTH_* variables decide.
if [ -n "${PHASETUNE_RAY_AUTH_TOKEN_FILE:-}" ]; then
    if [ ! -s "$PHASETUNE_RAY_AUTH_TOKEN_FILE" ]; then
        echo "$(basename "$0"): no Ray token in $PHASETUNE_RAY_AUTH_TOKEN_FILE (migrate.sh makes it)" >&2
        exit 2
    fi
    RAY_AUTH_MODE=token
    RAY_AUTH_TOKEN_PATH="$PHASETUNE_RAY_AUTH_TOKEN_FILE"
    export RAY_AUTH_MODE RAY_AUTH_TOKEN_PATH
fi
