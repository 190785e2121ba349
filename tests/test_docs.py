"""The docs: the generated reference pages match the code, the site builds offline with warnings as errors, and the
README stays short.

The reference pages are regenerated in memory (``scripts/gen_docs.py``) and compared with the committed ones, so a
setting or a spec field that changes without its page fails here, with the command that rewrites them.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150


@pytest.fixture(scope="module")
def gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages(gen_docs: ModuleType) -> dict[str, str]:
    generated: dict[str, str] = gen_docs.pages()
    return generated


def test_the_generated_pages_are_current(gen_docs: ModuleType, pages: dict[str, str]) -> None:
    assert set(pages) == {"docs/reference/settings.md", "docs/reference/spec.md"}
    for path, text in pages.items():
        committed = (ROOT / path).read_text() if (ROOT / path).exists() else ""
        assert committed == text, f"{path} is stale: run `{gen_docs.COMMAND}` and commit the result"


def test_every_setting_is_on_the_settings_page(pages: dict[str, str]) -> None:
    from phasetune.service.settings import Settings

    page = pages["docs/reference/settings.md"]
    for name, field in Settings.model_fields.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `PHASETUNE_{name.upper()}` |"))
        assert field.description and " ".join(field.description.split()) in row
    assert str(Path.cwd()) not in page and str(Path.home()) not in page, "a machine's own path leaked into the page"
    assert "| `PHASETUNE_MAX_BODY_BYTES` | int, >= 1024 | `1048576` |" in page
    assert "| `PHASETUNE_AUTH` | `auto` \\| `on` | `auto` |" in page


def test_a_setting_without_a_description_is_refused(gen_docs: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from phasetune.service.settings import Settings

    field = Settings.model_fields["ray_port"]
    monkeypatch.setattr(field, "description", None)
    with pytest.raises(ValueError, match="ray_port has no description"):
        gen_docs.settings_page()


def test_the_spec_page_states_the_published_schema(gen_docs: ModuleType, pages: dict[str, str]) -> None:
    """Spot checks against the OpenAPI document itself: its defaults and bounds, each family, each built-in
    workload, and nothing that depends on which plugins happen to be installed."""
    document = gen_docs.openapi_document()
    components = document["components"]["schemas"]
    page = pages["docs/reference/spec.md"]
    assert page == gen_docs.spec_page(document)
    study = components["StudyCreate"]["properties"]
    assert f"| `max_concurrent_trials` | integer | [1, {study['max_concurrent_trials']['maximum']:.0f}] | `1` |" in page
    grid = components["StrategyIn"]["properties"]["grid"]["anyOf"][0]
    assert f"| `grid` | integer, null | [{grid['minimum']:.0f}, {grid['maximum']:.0f}] |  |" in page
    for family in (key.split(".", 1)[1] for key in components if key.startswith("Segment.")):
        assert f"\n### {family}\n" in page
    for workload in ("ps10", "digits", "quadratic", "fashion_mnist", "npz", "image_folder"):
        assert f"\n### {workload}\n" in page
    # A workload from a plugin (the example's `sines`) or its metric must never reach the committed page.
    plugin = {"type": "object", "title": "sines", "properties": {"name": {"const": "sines"}, "params": {}}}
    components["WorkloadIn"]["anyOf"].append(plugin)
    components["ObjectiveIn"]["properties"]["metric"]["enum"].append("val_close")
    assert gen_docs.spec_page(document) == page


def test_the_readme_is_short_and_links_only_pages_that_exist() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    # Its first commands stay the two set-up commands: the main job, then the tests.
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.S)
    assert first_block is not None
    assert [line.split()[:2] for line in first_block.group(1).splitlines()] == [
        ["bash", "scripts/quickstart.sh"], ["bash", "scripts/test.sh"]]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        assert f" {page.relative_to(ROOT / 'docs').as_posix()}\n" in nav, f"{page} is not in mkdocs.yml's nav"


def test_the_site_builds_strict_and_offline(tmp_path: Path) -> None:
    """What CI's docs step runs (mkdocs is a dev dependency: a missing one fails here, it does not skip)."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # Offline: no page loads a script, a style sheet or a font from the network.
    for html in tmp_path.rglob("*.html"):
        remote = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]*)"', html.read_text())
        assert not remote, f"{html.relative_to(tmp_path)} loads {remote} from the network"
    assert (tmp_path / "reference" / "settings" / "index.html").exists()
