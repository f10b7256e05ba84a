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
autodoc_default_options = {"show-inheritance": True}
# Keep the signatures as written: the defaults of a few functions are arrays or dtypes.
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = f"gcref {release}"

#: Public modules with an API page, in the order of the site's table of contents:
#: (module, title, one-line summary).
API_MODULES = [
    ("gcref", "gcref", "The MLP reference: primitives, measures, norms, optimisers, training."),
    ("gcref.models", "gcref.models", "Every measure, once, for a gcref MLP, a torch module or a JAX function."),
    ("gcref.data", "gcref.data", "The data contract: arrays, pairs, batches, loaders, dicts."),
    ("gcref.results", "gcref.results", "The result records, serialisable with to_dict."),
    ("gcref.penalties", "gcref.penalties", "GC and IGR as differentiable training penalties."),
    ("gcref.testing", "gcref.testing", "Derivative checks by finite differences."),
    ("gcref.testing.conformance", "gcref.testing.conformance", "Verify your own implementation against the reference."),
    ("gcref.testing.strategies", "gcref.testing.strategies", "Hypothesis strategies for MLP problems."),
    ("gcref.backends.torch_layers", "gcref.backends.torch_layers", "The registry of per-layer norm rules for torch modules."),
    ("gcref.nets.torch", "gcref.nets.torch", "PyTorch networks: ResNet-18, a small CNN, an MLP."),
    ("gcref.nets.jax", "gcref.nets.jax", "JAX networks and the JAX function of a gcref MLP."),
]


def available_api_modules():
    """The entries of :data:`API_MODULES` whose module exists, with the module imported.

    Returns
    -------
    list of (module, title, summary)

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
        found.append((importlib.import_module(name), title, summary))
    return found


def public_names(module):
    """``module.__all__``, or the public names the module defines itself."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
        ]
    return list(names)


def api_members(modules):
    """Split each module's public names into those documented on its page and re-exports.

    An object is documented once, on the first page (in :data:`API_MODULES` order) that
    exports it; the later pages link to it. (Documenting a class twice gives Sphinx two
    descriptions of its one canonical name.)

    Returns
    -------
    dict
        Module name -> ``(documented names, [(name, documented full name), ...])``.
    """
    owner = {}
    members = {}
    for module, _, _ in modules:
        own, linked = [], []
        for name in public_names(module):
            obj = getattr(module, name)
            key = id(obj)
            if key in owner:
                linked.append((name, owner[key]))
            else:
                owner[key] = f"{module.__name__}.{name}"
                own.append(name)
        members[module.__name__] = (own, linked)
    return members


def _write_if_changed(path, text):
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def api_page(module, title, summary, own, linked):
    """The MyST text of one module's API page."""
    text = f"# {title}\n\n{summary}\n\n"
    text += f"```{{eval-rst}}\n.. automodule:: {module.__name__}\n   :members: {', '.join(own)}\n```\n"
    if linked:
        text += "\n## Documented elsewhere\n\nAlso exported by this module, the same objects as:\n\n"
        text += "".join(f"- `{name}`: {{py:obj}}`{target}`\n" for name, target in linked)
    return text


def write_api_pages():
    """Write ``api/index.md`` and one page per available module; remove stale pages."""
    api = DOCS / "api"
    api.mkdir(exist_ok=True)
    modules = available_api_modules()
    members = api_members(modules)
    pages = {
        f"{module.__name__}.md": api_page(module, title, summary, *members[module.__name__])
        for module, title, summary in modules
    }
    toc = "\n".join(module.__name__ for module, _, _ in modules)
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


# gcref's docstrings are plain text with reST literals: they write absolute values and
# norms as |x| and unpacked shapes as (N, *input_shape), never reST substitutions or
# emphasis. Escape those bars and stars (outside inline literals, literal blocks and
# doctest lines) so that docutils shows them instead of failing on them.
_INLINE_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")
_UNPACKING_STAR = re.compile(r"(?<![\w*\\])(\*\*?)(?=[A-Za-z_]\w*(?![\w*]))")


def _indent(line):
    return len(line) - len(line.lstrip())


def _escape_prose(part):
    part = part.replace("|", r"\|")
    return _UNPACKING_STAR.sub(lambda m: "\\*" * len(m.group(1)), part)


def escape_plain_text(lines):
    """Escape ``|`` and unpacking ``*`` in the prose lines of a docstring, in place.

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
        if not ("|" in line or "*" in line) or stripped.startswith((">>>", "...", "| ", "+-", "+=")):
            continue
        parts = _INLINE_LITERAL.split(line)
        lines[index] = "".join(part if i % 2 else _escape_prose(part) for i, part in enumerate(parts))


def _process_docstring(app, what, name, obj, options, lines):
    escape_plain_text(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _process_docstring)


# Frameworks are imported by the API pages of gcref.nets; keep them off any accelerator
# and quiet while the site builds.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
write_api_pages()
