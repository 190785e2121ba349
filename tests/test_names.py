"""One owner for every name phasetune stores (issue 21): Optuna attr names and result keys live in
``phasetune.workers.study_attrs`` (torch-free, importable by the CLI), and the code that writes attrs names them
through it, never with a literal."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRITERS = ("set_user_attr", "set_attr", "set_study_user_attr", "set_trial_user_attr")


def test_the_names_module_loads_no_torch_ray_or_optuna():
    code = ("import sys, phasetune.workers.study_attrs; "
            "print(sorted({'torch', 'ray', 'optuna', 'numpy'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_no_attr_is_written_under_a_literal_name():
    literals = []
    for folder in ("workers", "service", "search_spaces", "phasetune"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITERS
                        and node.args):
                    name = node.args[-2] if node.func.attr.startswith("set_") and len(node.args) == 3 else node.args[0]
                    if isinstance(name, ast.Constant) and isinstance(name.value, str):
                        literals.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name.value!r}")
    assert not literals, literals


def test_no_other_module_defines_a_stored_name():
    from phasetune.workers import study_attrs

    names = {value for key, value in vars(study_attrs).items() if key.isupper() and isinstance(value, str)}
    owners = []
    for folder in ("workers", "service"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "study_attrs.py":
                continue
            for node in ast.parse(path.read_text()).body:
                if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                        and node.value.value in names and all(isinstance(t, ast.Name) for t in node.targets)):
                    owners.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.value!r}")
    assert not owners, owners
