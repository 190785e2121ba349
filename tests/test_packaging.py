"""The distribution installs one import package, ``phasetune``: the built wheel, in a fresh venv, puts nothing else at
the top of site-packages, and works from a directory whose own ``service/`` and ``workers/`` would shadow a
top-level package of those names (an application's folders, or PyPI's ``service`` and ``workers``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("phasetune", "service", "workers", "search_spaces")  # what the wheel is built from


def test_every_package_folder_is_listed_in_pyproject():
    """``packages`` is listed by hand (``find`` would name the folders top-level): a new subpackage must join it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {folder: name for name, folder in config["package-dir"].items()}
    found = {
        ".".join([mapped[init.relative_to(ROOT).parts[0]], *init.relative_to(ROOT).parts[1:-1]])
        for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")
    }
    assert found == set(config["packages"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (a build in the repo would leave build/ and egg-info there)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("phasetune-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A new, empty venv with the wheel installed into it by this venv's pip (``--python``: no pip of its own to
    bootstrap; its dependencies come from this venv, on PYTHONPATH: the test is about what the wheel itself
    installs); its python and its site-packages."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    return python, Path(purelib)


@pytest.mark.slow  # builds a wheel and a venv: seconds, like the other end-to-end tests
def test_the_wheel_puts_only_phasetune_at_the_top_of_site_packages(fresh_venv):
    _, site_packages = fresh_venv
    added = {p.name for p in site_packages.iterdir()}  # the venv was made without pip: it held nothing before
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert added == {"phasetune", f"phasetune-{version}.dist-info"}
    installed = site_packages / "phasetune"
    assert {p.name for p in installed.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "service", "workers", "search_spaces"}
    assert (installed / "py.typed").is_file()


@pytest.mark.slow
def test_the_installed_package_imports_beside_decoy_service_and_workers_folders(fresh_venv, tmp_path):
    python, _ = fresh_venv
    for decoy in ("service", "workers", "search_spaces"):
        (tmp_path / decoy).mkdir()
        (tmp_path / decoy / "__init__.py").write_text(f"raise ImportError('the decoy {decoy} was imported')\n")
    deps = sysconfig.get_paths()["purelib"]  # this venv's: torch, fastapi, ... (its .pth files are not read)
    script = (
        "import phasetune, phasetune.service.main, phasetune.workloads as w\n"
        "from phasetune.workers.workloads import registered\n"
        f"assert phasetune.__file__.startswith({str(fresh_venv[1])!r}), phasetune.__file__\n"
        "assert issubclass(phasetune.SpecError, ValueError) and callable(phasetune.attach)\n"
        "assert w.WorkloadSpec and w.Param and w.GROUP == 'phasetune.workloads'\n"
        "names = set(registered())\n"
        "assert {'ps10', 'digits', 'quadratic'} <= names, names\n"
        "print(phasetune.__version__)\n"
    )
    done = subprocess.run([str(python), "-c", script], cwd=tmp_path, env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "0.1.0"
