"""The import direction that the file tree shows: core <- seq, baselines <- experiments.

The core (the modules at the top of ``mlesearch/``) imports nothing from ``mlesearch.seq``,
``mlesearch.baselines`` or ``mlesearch.experiments``; ``seq`` and ``baselines`` import nothing from
``experiments``. Only real import statements count, wherever they are (inside functions too): the
lazy attributes of ``mlesearch/__init__.py`` name their modules in strings.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlesearch"
LAYERS = ("seq", "baselines", "experiments")
# What each layer may not import.
FORBIDDEN = {
    "core": ("mlesearch.seq", "mlesearch.baselines", "mlesearch.experiments"),
    "seq": ("mlesearch.baselines", "mlesearch.experiments"),
    "baselines": ("mlesearch.experiments",),
    "experiments": (),
}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if parts == ("__main__.py",):
        # `python -m mlesearch` runs the demonstration: an entry point, as the console script is,
        # that no module imports.
        return "experiments"
    return parts[0] if len(parts) > 1 else "core"


def _module_name(path: Path) -> str:
    parts = ["mlesearch", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module that the import statements of ``source`` name, relative imports resolved.

    ``from a import b`` counts as ``a`` and as ``a.b``, since ``b`` may be a submodule.
    """
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def violations(path: Path, source: str | None = None) -> list[str]:
    """The imports of the module at ``path`` (or of ``source`` as if it were there) that go
    against the direction of its layer."""
    source = path.read_text() if source is None else source
    forbidden = FORBIDDEN[_layer(path)]
    imported = imported_modules(source, _module_name(path), path.name == "__init__.py")
    return sorted(
        name
        for name in imported
        if any(name == bad or name.startswith(bad + ".") for bad in forbidden)
    )


def test_the_tree_shows_the_layers():
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer
    for module in ("transform", "recipes", "sampling", "_mesh", "_threefry", "_checks", "_utils"):
        assert (PACKAGE / f"{module}.py").is_file(), module
    assert (PACKAGE / "experiments" / "tasks").is_dir()
    assert (PACKAGE / "experiments" / "configs").is_dir()
    top_level = PACKAGE.parent / "configs"
    assert top_level.resolve() == (PACKAGE / "experiments" / "configs").resolve()


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_point_from_experiments_to_toolkit_to_core(path):
    assert violations(path) == [], f"{path.relative_to(PACKAGE)} imports {violations(path)}"


@pytest.mark.parametrize(
    "layer, source, expected",
    [
        ("transform.py", "from mlesearch.seq import metrics", ["seq", "seq.metrics"]),
        ("transform.py", "def f():\n    import mlesearch.baselines.es", ["baselines.es"]),
        ("transform.py", "from mlesearch import experiments", ["experiments"]),
        ("seq/host.py", "from ..experiments import train", ["experiments", "experiments.train"]),
        ("seq/__init__.py", "from . import metrics\nfrom .. import baselines", ["baselines"]),
        (
            "baselines/es.py",
            "from mlesearch.experiments.train import run",
            ["experiments.train", "experiments.train.run"],
        ),
        ("transform.py", "x = 'mlesearch.seq.models'", []),
        ("experiments/cli.py", "from mlesearch.seq import models", []),
    ],
)
def test_a_wrong_import_is_caught(layer, source, expected):
    assert violations(PACKAGE / layer, source) == [f"mlesearch.{name}" for name in expected]


def test_library_imports_no_experiment_dependencies(run_python):
    # In a fresh process: the toolkit without flax where it can, and no harness dependencies.
    code = (
        "import sys\n"
        "import mlesearch, mlesearch.baselines, mlesearch.seq.metrics, mlesearch.seq.host\n"
        "heavy = ('flax', 'ml_collections', 'tqdm', 'matplotlib', 'orbax', 'evosax')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "import mlesearch.seq.decoding\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    assert run_python(["-c", code], timeout=300).splitlines() == ["[]", "['flax']"]


def test_documented_short_names_load_the_moved_modules():
    import mlesearch

    assert mlesearch.metrics.__name__ == "mlesearch.seq.metrics"
    assert mlesearch.models.__name__ == "mlesearch.seq.models"
    assert mlesearch.decoding.__name__ == "mlesearch.seq.decoding"
    assert mlesearch.baselines.__name__ == "mlesearch.baselines"
    assert mlesearch.host_task_loss.__module__ == "mlesearch.seq.host"
    lazy = {"metrics", "models", "decoding", "baselines", "host_task_loss", "nnx_task_loss"}
    assert lazy <= set(dir(mlesearch))
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        mlesearch.train  # noqa: B018 - the experiments are not part of the library's namespace.


def test_the_namespace_is_the_api_with_the_toolkit_loaded_lazily(run_python):
    import inspect

    import mlesearch
    from mlesearch import recipes, sampling, transform

    lazy = {"metrics", "models", "decoding", "baselines", "host_task_loss", "nnx_task_loss"}
    assert not lazy & set(mlesearch.__all__)  # `from mlesearch import *` needs no flax
    assert lazy <= set(dir(mlesearch))
    assert not {"importlib", "Any"} & set(dir(mlesearch))
    for name in mlesearch.__all__:
        assert getattr(mlesearch, name).__doc__, name
    # Every public function and class of the core modules is exported; the others are private.
    for module in (sampling, transform, recipes):
        defined = [
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and (inspect.isfunction(value) or inspect.isclass(value))
            and value.__module__ == module.__name__
        ]
        assert set(defined) <= set(mlesearch.__all__), (module.__name__, defined)
    code = (
        "import sys\n"
        "from mlesearch import *\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mlesearch.seq', "
        "'mlesearch.baselines', 'flax'))))\n"
    )
    assert run_python(["-c", code], timeout=300).splitlines()[-1] == "[]"
