"""The documentation site builds without a warning, and its API reference covers the public API.

The build is `sphinx-build -W -b html docs OUT` offline (``MLESEARCH_DOCS_OFFLINE=1``: no
intersphinx downloads), as docs/development.md describes. It needs the ``docs`` extra, which the
``test`` extra includes.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import mlesearch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API_PAGE = DOCS / "api.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _api_reference_names() -> list[str]:
    """The full names that the autosummary lists of docs/api.md document, in order."""
    names = []
    for block in re.findall(r"```\{eval-rst\}\n(.*?)```", API_PAGE.read_text(), flags=re.DOTALL):
        module = re.search(r"^\.\. currentmodule:: (\S+)$", block, flags=re.MULTILINE).group(1)
        listing = block.split(".. autosummary::", 1)[1]
        names += [
            f"{module}.{line.strip()}"
            for line in listing.splitlines()
            if line.strip() and not line.strip().startswith(":")
        ]
    return names


def test_the_api_reference_lists_every_name_of_mlesearch_all():
    listed = set(_api_reference_names())
    missing = [name for name in mlesearch.__all__ if f"mlesearch.{name}" not in listed]
    assert not missing, f"docs/api.md lists no autosummary entry for {missing}"


def _build_site(out: pathlib.Path) -> None:
    """Builds the site into ``out``: offline, warnings as errors."""
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, out],
        env={**os.environ, "MLESEARCH_DOCS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stderr[-6000:]}"
    assert (out / "index.html").is_file()


def _check_api_pages(site: pathlib.Path) -> None:
    """Every name of ``__all__`` and of docs/api.md has a page that api.html links to."""
    api_page = (site / "api.html").read_text()
    for name in [f"mlesearch.{name}" for name in mlesearch.__all__] + _api_reference_names():
        page = f"_autosummary/{name}.html"
        assert (site / page).is_file(), f"no page for {name}"
        assert f'href="{page}"' in api_page, f"api.html does not link to {name}"


def _check_module_signature(site: pathlib.Path) -> None:
    """A flax linen module's page shows its own fields, not linen's ``parent`` and ``name``."""
    page = (site / "_autosummary" / "mlesearch.models.TransformerLM.html").read_text()
    signature = page.split('id="mlesearch.models.TransformerLM"', 1)[1].split("</dt>", 1)[0]
    assert "config" in signature
    assert "parent" not in signature, signature
    assert '<span class="pre">name</span>' not in signature, signature


def _check_notebook_pages(site: pathlib.Path) -> None:
    """Every notebook is a page with its stored outputs; the jupytext twins are not pages."""
    assert NOTEBOOKS
    for notebook in NOTEBOOKS:
        page = (site / "notebooks" / notebook.with_suffix(".html").name).read_text()
        assert "cell_output" in page, f"{notebook.name} is rendered without its outputs"
    assert not list((site / "_sources" / "notebooks").glob("*.py*"))


def test_the_site_builds_without_a_warning_with_every_api_name_and_notebook(tmp_path):
    """One test, so that parallel workers never build into the same source tree at once.

    The build writes the autosummary pages into docs/_autosummary, in the source tree.
    """
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip(
            'sphinx is not installed; pip install ".[docs]" (or ".[test]") to build the docs'
        )
    # myst-nb writes the notebooks' images beside the output folder, so both go in this one.
    site = tmp_path / "html"
    _build_site(site)
    _check_api_pages(site)
    _check_module_signature(site)
    _check_notebook_pages(site)
