#!/bin/sh
# optuna-dashboard on the same storage as the API.
#
#   PHASETUNE_STORAGE_URL       SQLAlchemy URL of the storage         (required)
#   PHASETUNE_DASHBOARD_HOST    interface to bind                     (default 0.0.0.0)
#   PHASETUNE_DASHBOARD_PORT    port to bind                          (default 8080)
#   PHASETUNE_DASHBOARD_SERVER  optuna-dashboard --server: auto, wsgiref, gunicorn
#                                                                     (default auto)
#   OPTUNA_DASHBOARD_BIN        the optuna-dashboard executable       (default: on PATH)
set -eu

if [ -z "${PHASETUNE_STORAGE_URL:-}" ]; then
    echo "dashboard: PHASETUNE_STORAGE_URL is not set" >&2
    exit 2
fi
exec "${OPTUNA_DASHBOARD_BIN:-optuna-dashboard}" "$PHASETUNE_STORAGE_URL" \
    --host "${PHASETUNE_DASHBOARD_HOST:-0.0.0.0}" \
    --port "${PHASETUNE_DASHBOARD_PORT:-8080}" \
    --server "${PHASETUNE_DASHBOARD_SERVER:-auto}"
