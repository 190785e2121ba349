"""docker/requirements.lock: the exact versions the images install, resolved from pyproject.toml.

Services pin what they ship: without a lock, two builds a week apart install two different programs. The lock
holds every package of ``phasetune[postgres]`` and their dependencies, resolved for the image (CPython 3.11,
Linux x86_64) against the CPU build of torch, except torch itself: docker/Dockerfile's ``TORCH_VERSION`` pins it,
because the CPU and GPU images install different builds of the same version.

    .venv/bin/python docker/lock.py                        # update the lock (uv; needs PyPI and the torch index)
    .venv/bin/python docker/lock.py --find-links DIR       # ... with a CPU torch wheel from DIR, not the index
    .venv/bin/python docker/lock.py --check                # offline: does the lock still match pyproject.toml?

The lock's header keeps a hash of its inputs (the dependencies, the ``postgres`` extra, the torch version, the
target); ``--check`` (run by tests/test_compose.py) fails when they changed, when a dependency is missing from
the lock or pinned outside its range, and when a CUDA package slipped in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "docker" / "requirements.lock"
DOCKERFILE = REPO / "docker" / "Dockerfile"
EXTRA = "postgres"
# The image's interpreter and platform (docker/Dockerfile's base image).
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-manylinux_2_28"
UPDATE_COMMAND = ".venv/bin/python docker/lock.py"
# Packages of a CUDA torch: the CPU image must never install them.
CUDA_PACKAGE = re.compile(r"^(nvidia-|triton$)")


def dockerfile_arg(name: str, dockerfile: Path = DOCKERFILE) -> str:
    """The default of ``ARG name=...`` in a Dockerfile (the one place the value is set)."""
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.M)
    if match is None:
        raise SystemExit(f"{dockerfile.relative_to(REPO)} has no `ARG {name}=...`")
    return match.group(1)


def requirements(pyproject: Path) -> list[Requirement]:
    """What the image installs: the project's dependencies and its ``postgres`` extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"][EXTRA]]]


def inputs_hash(pyproject: Path) -> str:
    """A hash of everything the resolution depends on, independent of the order of pyproject's lists."""
    inputs = {"requirements": sorted(str(r) for r in requirements(pyproject)),
              "torch": dockerfile_arg("TORCH_VERSION"), "python": PYTHON_VERSION, "platform": PYTHON_PLATFORM}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def header(digest: str) -> str:
    return (f"# The versions docker/Dockerfile installs (all but torch: its TORCH_VERSION pins it). Do not edit:\n"
            f"# update with `{UPDATE_COMMAND}` after changing pyproject.toml's dependencies.\n"
            f"# inputs-sha256: {digest}\n")


def pins(lock_text: str) -> dict[str, str]:
    """``{canonical name: version}`` of the lock's ``name==version`` lines."""
    found = {}
    for line in lock_text.splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def problems(pyproject: Path, lock: Path) -> list[str]:
    """Why the lock does not match pyproject.toml (empty: it does)."""
    if not lock.is_file():
        return [f"{lock.name} is missing"]
    text = lock.read_text()
    found = []
    recorded = re.search(r"^# inputs-sha256: ([0-9a-f]{64})$", text, re.M)
    if recorded is None or recorded.group(1) != inputs_hash(pyproject):
        found.append("the dependencies, the torch version or the target changed since the lock was made")
    pinned = pins(text)
    torch = dockerfile_arg("TORCH_VERSION")
    for requirement in requirements(pyproject):
        name = canonicalize_name(requirement.name)
        if name == "torch":
            if not requirement.specifier.contains(torch, prereleases=True):
                found.append(f"docker/Dockerfile's TORCH_VERSION={torch} is outside pyproject's {requirement}")
        elif name not in pinned:
            found.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            found.append(f"the lock pins {name}=={pinned[name]}, outside pyproject's {requirement}")
    if "torch" in pinned:
        found.append("the lock pins torch: docker/Dockerfile's TORCH_VERSION does")
    found += [f"the lock pins {name}, a CUDA package" for name in pinned if CUDA_PACKAGE.match(name)]
    return found


def _uv() -> str:
    for candidate in (Path(sys.executable).with_name("uv"), shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise SystemExit("uv is not installed: .venv/bin/pip install 'uv==0.9.5' (it is in the dev extra)")


def update(pyproject: Path, lock: Path, find_links: list[str]) -> None:
    """Re-resolve with uv, for the image's Python and platform, against the CPU torch."""
    torch = dockerfile_arg("TORCH_VERSION")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "torch.txt"
        constraints.write_text(f"torch=={torch}\n")
        command = [_uv(), "pip", "compile", str(pyproject), "--extra", EXTRA, "-c", str(constraints),
                   "--python-version", PYTHON_VERSION, "--python-platform", PYTHON_PLATFORM,
                   "--no-emit-package", "torch", "--no-header", "--index-strategy", "unsafe-best-match",
                   "--output-file", str(Path(tmp) / "lock.txt")]
        if find_links:
            command += [arg for directory in find_links for arg in ("--find-links", directory)]
        else:
            command += ["--extra-index-url", dockerfile_arg("TORCH_INDEX_URL")]
        subprocess.run(command, check=True, cwd=pyproject.parent)
        resolved = (Path(tmp) / "lock.txt").read_text()
    lock.write_text(header(inputs_hash(pyproject)) + resolved)
    if found := problems(pyproject, lock):
        raise SystemExit("the new lock is wrong:\n  " + "\n  ".join(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="check the lock against pyproject.toml, offline")
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR",
                        help="take the CPU torch wheel from DIR instead of docker/Dockerfile's TORCH_INDEX_URL")
    parser.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml", help=argparse.SUPPRESS)
    parser.add_argument("--lock", type=Path, default=LOCK, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.check:
        update(args.pyproject, args.lock, args.find_links)
        return 0
    if found := problems(args.pyproject, args.lock):
        sys.stderr.write(f"{args.lock.name} does not match {args.pyproject.name}; run `{UPDATE_COMMAND}`:\n")
        sys.stderr.writelines(f"  {problem}\n" for problem in found)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
