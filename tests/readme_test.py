"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_quickstart_and_reference_configuration():
    assert len(_python_blocks()) == 2


@pytest.mark.parametrize("index", [0, 1], ids=["quickstart", "reference_configuration"])
def test_readme_example_runs(index, capsys):
    namespace: dict = {}
    code = _python_blocks()[index]
    if index == 1:
        code = "import optax\nimport mlesearch as mls\n" + code
    exec(compile(code, f"README.md[{index}]", "exec"), namespace)
    if index == 0:
        out = capsys.readouterr().out
        error = float(out.split("0/1 error:")[1].split()[0])
        assert error < 0.1, out
    else:
        tx = namespace["tx"]
        assert hasattr(tx, "init") and hasattr(tx, "update")
