#!/usr/bin/env bash
# The test command: install into .venv (idempotent), then, with no arguments, `ruff check`, mypy, the fast subset
# (validation, routing, schedules, training, searcher: real SQLite/PostgreSQL, no Ray) and the slow tests
# (real Ray, `phasetune serve`, real HTTP, the cluster's processes) -- together, the whole suite.
# With arguments, pytest with them: `bash scripts/test.sh -m "not slow" -n auto` runs the fast subset alone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/ruff check .
# Types: mypy on the installed layout ([tool.mypy] in pyproject.toml: strict on search_spaces, a shrinking allowlist).
.venv/bin/python scripts/typecheck.py
# The docs site, warnings as errors (a broken link or anchor, a page left out of the nav), built away from the tree.
docs_site=$(mktemp -d)
.venv/bin/mkdocs build --strict --quiet --site-dir "$docs_site"
rm -rf "$docs_site"
started=$(date +%s)
# The fast subset on every core (pytest-xdist; no Ray, and each test makes its own storage, so its tests share
# nothing); the slow tests in one process, as they share the session's one Ray head.
.venv/bin/python -m pytest -m "not slow" -n auto --dist worksteal
echo "fast subset: $(( $(date +%s) - started )) s"
.venv/bin/python -m pytest -m slow --durations=10
echo "whole suite: $(( $(date +%s) - started )) s"
