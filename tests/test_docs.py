"""The documentation: its examples run, its citations resolve, and the site builds.

- Every ``>>>`` example in ``docs/*.md`` and in the docstrings of every gcref module runs
  as a doctest.
- Every "docs/math.md section N" (or "MATH.md section N") cited in gcref's sources names
  a section of ``docs/math.md``, every "seed 00N" a seed work of the bibliography, and
  every ``[key]`` of ``docs/math.md`` a bibliography entry.
- The Sphinx site builds with warnings as errors (skipped when Sphinx is not installed,
  failed when ``CI`` is set).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import io
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gcref

from conftest import require_backend

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PACKAGE = ROOT / "gcref"

OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# A framework a module imports at its top: a missing one skips locally, fails in CI.
_FRAMEWORKS = {"torch": "torch", "jax": "jax", "jaxlib": "jax", "autograd": "autograd"}

_SECTION_HEADING = re.compile(r"^## (\d+)\. \S", re.MULTILINE)
_MATH_CITATION = re.compile(
    r"(?:docs/math\.md|MATH\.md)[,:]?\s+(?:sections?|§)\s*"
    r"(\d+(?:\s*(?:,|and|&|-|to)\s*\d+)*)"
)
_SEED_CITATION = re.compile(r"\bseeds?\s+(\d{3}(?:\s*(?:,|and|&)\s*\d{3})*)")
_BIBLIOGRAPHY_KEY = re.compile(r"^\[([A-Za-z0-9-]+)\]$", re.MULTILINE)
_CITED_KEY = re.compile(r"\[([A-Za-z][A-Za-z0-9-]*)\](?!\()")


_FENCE = re.compile(r"^\s*(```|~~~).*$", re.MULTILINE)


def markdown_doctest(path):
    """The doctest of a Markdown page; code fences end an example's expected output."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return doctest.DocTestParser().get_doctest(text, {}, path.name, str(path), 0)


def run_doctests(tests):
    """Run ``doctest.DocTest`` objects; return (failed, attempted, report text)."""
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS)
    for test in tests:
        runner.run(test, out=out.write)
    failed, attempted = runner.summarize(verbose=False)
    return failed, attempted, out.getvalue()


def gcref_modules():
    """Every module of the gcref package, by name (packages are imported to list them).

    ``gcref.__main__`` is left out: importing it runs the command line.
    """
    names = ["gcref"]
    names += [info.name for info in pkgutil.walk_packages(gcref.__path__, prefix="gcref.")]
    return sorted(name for name in names if name.rpartition(".")[2] != "__main__")


def import_or_skip(name):
    """Import a gcref module; a missing framework skips locally and fails in CI."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        root = (err.name or "").partition(".")[0]
        if root not in _FRAMEWORKS:
            raise
        require_backend(_FRAMEWORKS[root])
        raise


def math_sections():
    return [int(n) for n in _SECTION_HEADING.findall((DOCS / "math.md").read_text(encoding="utf-8"))]


def bibliography_keys():
    return set(_BIBLIOGRAPHY_KEY.findall((DOCS / "bibliography.md").read_text(encoding="utf-8")))


def source_files():
    return sorted(PACKAGE.rglob("*.py"))


def cited_numbers(group):
    return [int(n) for n in re.findall(r"\d+", group)]


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_examples_of_the_docs_pages_run(page):
    failed, _, report = run_doctests([markdown_doctest(DOCS / page)])
    assert failed == 0, report


def test_the_mathematics_page_has_examples():
    """docs/math.md carries at least one example, so the test above can fail on it."""
    assert markdown_doctest(DOCS / "math.md").examples


@pytest.mark.parametrize("name", gcref_modules())
def test_docstring_examples_run(name):
    module = import_or_skip(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name, globs={})
    failed, _, report = run_doctests(tests)
    assert failed == 0, report


def test_the_module_walk_finds_the_documented_examples():
    """The walk reaches modules that hold examples, e.g. gcref.mlp's MLP."""
    names = gcref_modules()
    assert {"gcref", "gcref.mlp", "gcref.models", "gcref.nets.torch", "gcref.nets.jax"} <= set(names)
    tests = doctest.DocTestFinder(exclude_empty=True).find(importlib.import_module("gcref.mlp"))
    assert any(t.examples for t in tests)


def test_the_mathematics_keeps_sections_1_to_6():
    assert math_sections() == [1, 2, 3, 4, 5, 6]


def test_every_math_citation_in_gcref_names_a_section_of_docs_math():
    sections = set(math_sections())
    found, bad = 0, []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        for match in _MATH_CITATION.finditer(text):
            numbers = cited_numbers(match.group(1))
            found += 1
            line = text.count("\n", 0, match.start()) + 1
            bad += [f"{path.relative_to(ROOT)}:{line}: section {n}" for n in numbers if n not in sections]
    assert found > 0, "no citation found: the pattern no longer matches the docstrings"
    assert not bad, "citations of sections docs/math.md does not have:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "text, numbers",
    [
        ("MATH.md section 2", [2]),
        ("docs/math.md section 5", [5]),
        ("MATH.md sections 1 and 3", [1, 3]),
        ("MATH.md sections 1, 4 and 5", [1, 4, 5]),
        ("docs/math.md\n    section 6", [6]),
        ("(MATH.md, section 4)", [4]),
    ],
)
def test_the_citation_pattern_reads_every_form_in_use(text, numbers):
    (match,) = _MATH_CITATION.finditer(text)
    assert cited_numbers(match.group(1)) == numbers


def test_every_seed_citation_in_gcref_names_a_seed_of_the_bibliography():
    keys = bibliography_keys()
    assert {f"seed{n:03d}" for n in range(5)} <= keys
    bad = []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        for match in _SEED_CITATION.finditer(text):
            bad += [
                f"{path.relative_to(ROOT)}: seed {n}"
                for n in re.findall(r"\d{3}", match.group(1))
                if f"seed{n}" not in keys
            ]
    assert not bad, "\n".join(bad)


def test_every_key_cited_by_the_mathematics_is_in_the_bibliography():
    cited = set(_CITED_KEY.findall((DOCS / "math.md").read_text(encoding="utf-8")))
    assert {"seed000", "IGR", "SGD-IR"} <= cited
    assert cited <= bibliography_keys(), sorted(cited - bibliography_keys())


def _sphinx_installed():
    return all(importlib.util.find_spec(name) is not None for name in ("sphinx", "myst_parser"))


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    if not _sphinx_installed():
        message = "sphinx and myst-parser are not installed (pip install 'gcref[docs]')"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must build the documentation")
        pytest.skip(message)
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         str(DOCS), str(out), "-d", str(tmp_path / "doctrees")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    math_page = (out / "math.html").read_text(encoding="utf-8")
    for anchor in ("the-multilayer-perceptron", "the-transfer-theorem", "norms-rescaling-and-norm-aware-optimisers"):
        assert f'id="{anchor}"' in math_page
    assert 'class="math' in math_page
    assert 'id="gcref.MLP"' in (out / "api" / "gcref.html").read_text(encoding="utf-8")
    for name in ("gcref", "gcref.models", "gcref.testing"):
        module = importlib.import_module(name)
        page = (out / "api" / f"{name}.html").read_text(encoding="utf-8")
        # Functions and classes; constants appear only when documented with a #: comment.
        missing = [
            member
            for member in module.__all__
            if callable(getattr(module, member))
            and f'id="{name}.{member}"' not in page
            and f'<span class="pre">{member}</span>' not in page
        ]
        assert not missing, f"{name}: {missing} neither documented nor linked"
