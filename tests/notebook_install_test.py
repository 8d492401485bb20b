"""The notebooks' first cell installs mlesearch from what a user really has, or says what to do."""

import importlib.util
import pathlib
import re
import subprocess

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))
REPO = NOTEBOOKS[0].parents[1]


def _install_cell(notebook: pathlib.Path) -> tuple[str, str]:
    text = notebook.read_text()
    start = text.index("# On a fresh runtime (Colab)")
    cell = text[start : text.index("# %%", start)]
    extras = re.search(r'EXTRAS = "(.*)"', cell).group(1)
    return cell, extras


def _run(cell: str, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Runs the cell as on a runtime without mlesearch; returns the commands it ran."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlesearch" else find_spec(name, *a),
    )
    commands: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    exec(compile(cell, "install cell", "exec"), {})
    return commands


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_install_cell_says_what_to_do_without_a_source(notebook, tmp_path, monkeypatch):
    cell, _ = _install_cell(notebook)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLESEARCH_SOURCE", raising=False)
    with pytest.raises(RuntimeError, match="not on the package index.*MLESEARCH_SOURCE"):
        _run(cell, monkeypatch)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_install_cell_finds_the_source(notebook, tmp_path, monkeypatch):
    cell, extras = _install_cell(notebook)
    monkeypatch.delenv("MLESEARCH_SOURCE", raising=False)

    monkeypatch.chdir(REPO / "notebooks")  # inside a clone
    assert _run(cell, monkeypatch)[0][-1] == f"{REPO}{extras}"

    monkeypatch.chdir(tmp_path)  # an uploaded wheel
    wheel = tmp_path / "mlesearch-0.1.0-py3-none-any.whl"
    wheel.touch()
    assert _run(cell, monkeypatch)[0][-1] == f"{wheel}{extras}"

    monkeypatch.setenv("MLESEARCH_SOURCE", "git+https://example.org/mlesearch")
    command = _run(cell, monkeypatch)[0]
    assert command[-1] == f"mlesearch{extras} @ git+https://example.org/mlesearch"
    assert command[1:4] == ["-m", "pip", "install"]
