"""Sphinx configuration of the gcref documentation (``make docs``).

The mathematics and the bibliography are MyST Markdown pages; the API reference is
autodoc over the numpydoc docstrings. The API pages are written here, at each build, for
the public modules in :data:`API_MODULES` that exist: a module that is not there yet is
left out of the site, and one that exists but does not import stops the build (its
import error is the first thing to fix).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import gcref  # noqa: E402  (after the path is set)

project = "gcref"
author = "the gcref developers"
release = version = gcref.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", ".gitignore"]
root_doc = "index"

myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
myst_heading_anchors = 2

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Keep the signatures as written: the defaults of a few functions are arrays or dtypes.
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = f"gcref {release}"

#: Public modules with an API page, in the order of the site's table of contents:
#: (module, title, one-line summary).
API_MODULES = [
    ("gcref", "gcref", "The MLP reference: primitives, measures, norms, optimisers, training."),
    ("gcref.models", "gcref.models", "The measures on users' own torch modules and JAX functions."),
    ("gcref.penalties", "gcref.penalties", "Training penalties, each defined once."),
    ("gcref.testing", "gcref.testing", "Gradient checkers used by the tests."),
    ("gcref.nets.torch", "gcref.nets.torch", "PyTorch networks: ResNet-18, a small CNN, an MLP."),
    ("gcref.nets.jax", "gcref.nets.jax", "JAX networks and the JAX function of a gcref MLP."),
]


def available_api_modules():
    """The entries of :data:`API_MODULES` whose module exists, imported.

    Raises
    ------
    ImportError
        For a module that exists but fails to import.
    """
    found = []
    for name, title, summary in API_MODULES:
        parent = name.rpartition(".")[0]
        if parent and importlib.util.find_spec(parent) is None:
            continue
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name)
        found.append((name, title, summary))
    return found


def _write_if_changed(path, text):
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def write_api_pages():
    """Write ``api/index.md`` and one page per available module; remove stale pages."""
    api = DOCS / "api"
    api.mkdir(exist_ok=True)
    modules = available_api_modules()
    pages = {}
    for name, title, summary in modules:
        pages[f"{name}.md"] = (
            f"# {title}\n\n{summary}\n\n"
            f"```{{eval-rst}}\n.. automodule:: {name}\n```\n"
        )
    toc = "\n".join(f"{name}" for name, _, _ in modules)
    pages["index.md"] = (
        "# API reference\n\n"
        "One page per public module; the formulas in the docstrings' Notes are those of\n"
        "[the mathematics](../math.md), cited by section number.\n\n"
        f"```{{toctree}}\n:maxdepth: 1\n\n{toc}\n```\n"
    )
    for stale in api.glob("*.md"):
        if stale.name not in pages:
            stale.unlink()
    for filename, text in pages.items():
        _write_if_changed(api / filename, text)


# gcref's docstrings write absolute values and norms as |x| in plain text, never reST
# substitutions: escape those bars (outside inline literals, literal blocks and doctest
# lines) so that docutils shows them instead of failing on an undefined substitution.
_INLINE_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")


def _indent(line):
    return len(line) - len(line.lstrip())


def escape_bars(lines):
    """Escape ``|`` in the prose lines of a docstring, in place.

    Parameters
    ----------
    lines : list of str
        The docstring's lines, as autodoc hands them to ``autodoc-process-docstring``.
    """
    literal_indent = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        if literal_indent is not None:
            if not stripped or _indent(line) > literal_indent:
                continue
            literal_indent = None
        if stripped.endswith("::"):
            literal_indent = _indent(line)
        if "|" not in line or stripped.startswith((">>>", "...", "| ", "+-", "+=")):
            continue
        parts = _INLINE_LITERAL.split(line)
        lines[index] = "".join(
            part if i % 2 else part.replace("|", r"\|") for i, part in enumerate(parts)
        )


def _process_docstring(app, what, name, obj, options, lines):
    escape_bars(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _process_docstring)


# Frameworks are imported by the API pages of gcref.nets; keep them off any accelerator
# and quiet while the site builds.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
write_api_pages()
