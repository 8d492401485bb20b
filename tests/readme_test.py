"""The Python examples of the README and of the docs pages run as written."""

import ast
import inspect
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PRELUDE = "import jax\nimport jax.numpy as jnp\nimport optax\nimport mlesearch as mls\n"


def _python_blocks(page: pathlib.Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


# Every example after the README's quickstart, and every example of the docs pages, by the path
# of its page (relative to the repository) and its index there.
SNIPPETS = [("README.md", i) for i in range(1, len(_python_blocks()))] + [
    (page.relative_to(ROOT).as_posix(), i)
    for page in DOCS
    for i in range(len(_python_blocks(page)))
]


def test_readme_quickstart_runs_and_learns(capsys):
    quickstart = _python_blocks()[0]
    exec(compile(quickstart, "README.md[quickstart]", "exec"), {})
    out = capsys.readouterr().out
    error = float(out.split("0/1 error:")[1].split()[0])
    assert error < 0.1, out


def test_the_docs_have_examples_to_run():
    assert any(page != "README.md" for page, _ in SNIPPETS), "no Python example in docs/*.md"


@pytest.mark.parametrize("page,index", SNIPPETS)
def test_snippet_runs(page, index):
    block = _python_blocks(ROOT / page)[index]
    namespace: dict = {}
    exec(compile(PRELUDE + block, f"{page}[{index}]", "exec"), namespace)
    tx = namespace["tx"]
    assert hasattr(tx, "init") and hasattr(tx, "update")


def test_relative_links_of_the_readme_and_docs_resolve():
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_ci_runs_the_readme_commands():
    """`.ci/run` runs the two commands of the README's Install section, as written there."""
    install = README.read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", install, flags=re.DOTALL)
    assert len(commands) == 2
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command.strip() in ci


def test_the_guide_states_the_defaults_of_with_mgs():
    """docs/guide.md's "start from the defaults" list names every default as the code has it."""
    import mlesearch as mls

    guide = (ROOT / "docs" / "guide.md").read_text()
    start = guide.index("Start from `with_mgs` with its defaults")
    stated = dict(re.findall(r"`(\w+)=([^`]+)`", guide[start : guide.index("read", start)]))
    assert len(stated) >= 9, stated
    parameters = inspect.signature(mls.with_mgs).parameters
    for name, text in stated.items():
        assert parameters[name].default == ast.literal_eval(text), name
