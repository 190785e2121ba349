"""mypy over the package as it installs: `python scripts/typecheck.py` (scripts/test.sh runs it after ruff).

setuptools maps the repo's folders under ``phasetune.*`` (``[tool.setuptools.package-dir]``); mypy follows neither
that mapping nor the editable install's import hook. So this lays the mapping out as symlinks under build/mypy/
(what setuptools' own ``editable_mode=strict`` does), checks ``-p phasetune`` there with ``[tool.mypy]``'s
settings, and prints the errors with repo paths (``service/db.py:12``, not the link's path). Exit status: mypy's.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from mypy import api

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LAYOUT = REPO / "build" / "mypy" / "layout"


def lay_out() -> dict[str, str]:
    """The symlink tree of ``package-dir``; returns each linked folder's path as mypy prints it -> the repo's.

    A package whose subpackages live elsewhere (``phasetune``) is a real folder of links to its files, so that no
    link is ever made inside the repo's own folders."""
    mapping: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    parents = {package.rpartition(".")[0] for package in mapping}
    prefixes = {}
    for package, folder in mapping.items():
        link, source = LAYOUT.joinpath(*package.split(".")), REPO / folder
        if package in parents:
            link.mkdir(parents=True, exist_ok=True)
            entries = [(link / child.name, child) for child in source.iterdir() if child.name != "__pycache__"]
        else:
            link.parent.mkdir(parents=True, exist_ok=True)
            entries = [(link, source)]
        for at, target in entries:
            if at.is_symlink() and at.resolve() != target.resolve():
                at.unlink()
            if not at.is_symlink():
                at.symlink_to(target, target_is_directory=target.is_dir())
        prefixes[link.relative_to(REPO).as_posix() + "/"] = Path(folder).as_posix().rstrip("/") + "/"
    return prefixes


def main() -> int:
    os.chdir(REPO)  # mypy prints paths relative to here
    prefixes = lay_out()
    stdout, stderr, status = api.run(["--config-file", str(REPO / "pyproject.toml"), "-p", "phasetune"])
    # Longest prefix first: build/mypy/layout/phasetune/service/ before build/mypy/layout/phasetune/.
    pattern = re.compile("|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True)))
    sys.stdout.write(pattern.sub(lambda match: prefixes[match.group(0)], stdout))
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
