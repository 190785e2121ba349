#!/usr/bin/env bash
# The test command: install into .venv (idempotent), then run the whole suite against real Ray, SQLite,
# PostgreSQL (127.0.0.1:5432, or $PHASETUNE_TEST_PG) and real HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
