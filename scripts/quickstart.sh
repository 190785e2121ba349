#!/usr/bin/env bash
# The main job on the embedded default (SQLite + a local Ray): install, start the service (API, Ray head, Optuna
# dashboard), submit the example study, show its progress, and print the best schedule and the dashboard's address.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p .phasetune
export PHASETUNE_API_URL=${PHASETUNE_API_URL:-http://127.0.0.1:8000}
PORT=${PHASETUNE_API_URL##*:}
if ! curl -fs "$PHASETUNE_API_URL/health" >/dev/null 2>&1; then
  nohup .venv/bin/phasetune serve --port "$PORT" > .phasetune/serve.log 2>&1 &
  echo $! > .phasetune/serve.pid
  echo "phasetune: starting the service (log: .phasetune/serve.log, pid $(cat .phasetune/serve.pid))"
  for _ in $(seq 1 120); do
    curl -fs "$PHASETUNE_API_URL/health" >/dev/null 2>&1 && break
    sleep 1
  done
fi
curl -fs "$PHASETUNE_API_URL/health" >/dev/null || { echo "the service did not start: see .phasetune/serve.log"; exit 1; }
SPEC=${1:-examples/two_phase_ps10.json}
NAME="$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['name'])" "$SPEC")-$(date +%Y%m%d-%H%M%S)"
.venv/bin/phasetune submit "$SPEC" --name "$NAME" --watch
echo "phasetune: the service keeps running; stop it with: kill \$(cat .phasetune/serve.pid) && .venv/bin/phasetune stop-ray"
