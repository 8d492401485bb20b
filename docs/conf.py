"""Sphinx configuration of the mlesearch documentation site.

Build it from the repository root with

    pip install ".[docs]" && sphinx-build -W -b html docs docs/_build

Cross-references to jax, optax, flax, numpy and Python are fetched from those projects' sites
(intersphinx). Without a network, set ``MLESEARCH_DOCS_OFFLINE=1``: the build then fetches
nothing, and those names are written as plain text instead of links.
"""

import inspect
import os
import pathlib
import re
import shutil
import sys

from sphinx import addnodes
from sphinx.transforms import SphinxTransform

import mlesearch

# mlesearch.metrics, .models and .decoding are attributes that load mlesearch.seq.* on first use,
# not modules that import; autodoc imports by module name, so they are registered under it.
for _name in ("metrics", "models", "decoding"):
    sys.modules.setdefault(f"mlesearch.{_name}", getattr(mlesearch, _name))

DOCS = pathlib.Path(__file__).resolve().parent
REPOSITORY = DOCS.parent

project = "mlesearch"
author = "The mlesearch authors"
copyright = "The mlesearch authors"
version = release = mlesearch.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx_copybutton",
]

# The pages are the Markdown files of docs/ (MyST, also read on GitHub) and the notebooks, which
# docs/notebooks links in from notebooks/; their jupytext twins (.py) are not pages.
# myst-nb writes the notebooks' images beside the output folder: into docs/jupyter_execute when
# the site is built into docs/_build.
exclude_patterns = ["_build", "jupyter_execute", "notebooks/*.py", "**/.ipynb_checkpoints"]
templates_path = ["_templates"]

# -- Notebooks: rendered with the outputs stored in them, never executed here. -----------------
nb_execution_mode = "off"
nb_merge_streams = True

# -- MyST ---------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- API reference ------------------------------------------------------------------------------
# The stubs of the API pages are generated from docs/api.md into docs/_autosummary/ (ignored by
# git). They are written afresh on every build, so that a name removed from the API leaves no page.
shutil.rmtree(DOCS / "_autosummary", ignore_errors=True)
autosummary_generate = True
autodoc_default_options = {"members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Returns: ``(k0, n - k0)``: the number of ..." reads as written, not as a return type.
napoleon_use_rtype = False
# The Attributes sections give shapes and dtypes; the annotations (jax.Array) would add little.
napoleon_attr_annotations = False
# A docstring inherited from another project's base class (flax's ``Module.setup``) is not ours.
autodoc_inherit_docstrings = False
python_maximum_signature_line_length = 88
# In the docstrings, `name` is inline code (as in Markdown); references are explicit roles.
default_role = "code"

# -- Cross-references ---------------------------------------------------------------------------
OFFLINE = os.environ.get("MLESEARCH_DOCS_OFFLINE", "") not in ("", "0")
intersphinx_mapping = (
    {}
    if OFFLINE
    else {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "jax": ("https://docs.jax.dev/en/latest", None),
        "optax": ("https://optax.readthedocs.io/en/latest", None),
        "flax": ("https://flax.readthedocs.io/en/latest", None),
    }
)
# Every reference to mlesearch must resolve. Names of other projects, mostly from the type
# annotations, link through intersphinx where those projects' inventories hold them; whether they
# do is up to them (and offline, nothing resolves), so they never fail the build.
nitpicky = True
_OTHER_PROJECTS = (
    "builtins|collections|typing|types|pathlib|numpy|jax|jaxlib|optax|chex|flax|ml_collections"
)
nitpick_ignore_regex = [("py:.*", rf"({_OTHER_PROJECTS})(\..*)?")]

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "mlesearch"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}


def _documented_fields(obj: type) -> list[str]:
    """The fields of a NamedTuple with the comment beside each in its source, as an Attributes
    section (Google style, which napoleon renders).

    The comments are the fields' documentation in the source: ``count: jax.Array  # () int32:
    number of steps taken.``, or comment lines just above a field.
    """
    source = inspect.getsource(obj).splitlines()
    section = ["", "Attributes:"]
    for field in obj._fields:
        pattern = re.compile(rf"\s+{field}\s*:[^#]*(?:#\s*(.*))?$")
        index = next((i for i, line in enumerate(source) if pattern.match(line)), None)
        if index is None:
            continue
        comment = [pattern.match(source[index]).group(1) or ""]
        above = index - 1
        while above >= 0 and source[above].strip().startswith("#"):
            comment.insert(0, source[above].strip().lstrip("#").strip())
            above -= 1
        section.append(f"  {field}: {' '.join(part for part in comment if part)}")
    return section


def _document_namedtuple_fields(app, what, name, obj, options, lines):
    """Adds the fields of a NamedTuple without an Attributes section to its docstring."""
    is_namedtuple = isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")
    if what == "class" and is_namedtuple and "Attributes:" not in (s.strip() for s in lines):
        lines.extend(_documented_fields(obj))


def _skip_fields(app, what, name, obj, skip, options):
    """Leaves out the fields of NamedTuples and dataclasses, which the Attributes section of
    the class describes, and keeps its methods and properties."""
    if what == "class" and not (inspect.isroutine(obj) or isinstance(obj, property)):
        return True
    return None


def _parseable_defaults(app, what, name, obj, options, signature, return_annotation):
    """Writes the defaults whose ``repr`` is not Python as Python: ``<class 'numpy.float32'>``
    as ``numpy.float32``, and a dataclass field's ``<factory>`` as ``...``. A signature that
    does not parse is shown as raw text. A flax linen module is shown without the ``parent``
    and ``name`` that linen adds to every module's constructor."""
    if what == "class" and _is_linen_module(obj):
        kept = [
            _parameter_text(p)
            for p in inspect.signature(obj).parameters.values()
            if p.name not in ("parent", "name")
        ]
        return f"({', '.join(kept)})", None
    if signature:
        signature = re.sub(r"<class '([\w.]+)'>", r"\1", signature)
        return signature.replace("<factory>", "..."), return_annotation
    return None


def _parameter_text(parameter: inspect.Parameter) -> str:
    """``name: annotation = default``, the annotation as written (not quoted)."""
    text = parameter.name
    if parameter.annotation is not parameter.empty:
        annotation = parameter.annotation
        if not isinstance(annotation, str):
            annotation = inspect.formatannotation(annotation)
        text += f": {annotation}"
    if parameter.default is not parameter.empty:
        text += f" = {parameter.default!r}"
    return text


def _is_linen_module(obj) -> bool:
    import flax.linen

    return isinstance(obj, type) and issubclass(obj, flax.linen.Module)


class _RepositoryLinks(SphinxTransform):
    """Links of the Markdown pages to files of the repository outside docs/.

    The pages link to ``../notebooks/NAME.ipynb`` and ``../benchmarks/...``, as GitHub resolves
    them. A notebook is also a page of the site (docs/notebooks links to notebooks/), so its link
    goes to that page; a link to any other file becomes a download, copied into the site.
    """

    default_priority = 100

    def apply(self, **kwargs) -> None:
        for node in list(self.document.findall(addnodes.pending_xref)):
            # MyST names a linked file outside docs/ by its absolute path, less the suffix.
            if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
                continue
            target = pathlib.Path(node["reftarget"])
            if not target.is_relative_to(REPOSITORY) or target.is_relative_to(DOCS):
                continue
            page = target.relative_to(REPOSITORY).as_posix()
            if page in self.env.found_docs:
                node["reftarget"] = page
                continue
            files = [pathlib.Path(f"{target}{suffix}") for suffix in self.config.source_suffix]
            file = next((file for file in files if file.is_file()), None)
            if file is not None:
                download = addnodes.download_reference(
                    "",
                    "",
                    *node.children,
                    refdoc=node["refdoc"],
                    reftarget=os.path.relpath(file, (DOCS / node["refdoc"]).parent),
                    refexplicit=True,
                    reftype="myst",
                    refdomain=None,
                )
                node.replace_self(download)


def setup(app):
    app.connect("autodoc-process-docstring", _document_namedtuple_fields, priority=400)
    app.connect("autodoc-skip-member", _skip_fields)
    app.connect("autodoc-process-signature", _parseable_defaults)
    app.add_transform(_RepositoryLinks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
