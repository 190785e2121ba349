#!/bin/sh
# One-shot: create (or upgrade) the Optuna schema and phasetune's tables in
# PHASETUNE_STORAGE_URL, then exit 0. Idempotent: safe to run on every `docker compose up`.
#
#   PHASETUNE_STORAGE_URL       SQLAlchemy URL of the storage (read by phasetune)
#   PHASETUNE_RAY_AUTH_TOKEN_FILE  where the cluster's Ray token goes: made here (mode 600) if missing
#   PHASETUNE_BIN               the phasetune executable      (default: phasetune on PATH)
set -eu

if [ -z "${PHASETUNE_STORAGE_URL:-}" ]; then
    echo "migrate: PHASETUNE_STORAGE_URL is not set" >&2
    exit 2
fi
if [ -n "${PHASETUNE_RAY_AUTH_TOKEN_FILE:-}" ] && [ ! -s "$PHASETUNE_RAY_AUTH_TOKEN_FILE" ]; then
    mkdir -p "$(dirname "$PHASETUNE_RAY_AUTH_TOKEN_FILE")"
    (umask 077 && python3 -c "import secrets; print(secrets.token_hex(32))" > "$PHASETUNE_RAY_AUTH_TOKEN_FILE")
fi
exec "${PHASETUNE_BIN:-phasetune}" migrate
