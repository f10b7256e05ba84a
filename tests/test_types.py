"""The type hints of the public modules: complete, shipped (``py.typed``) and checked by mypy.

mypy runs once, in a subprocess, on the files of ``[tool.mypy]`` in ``pyproject.toml``
together with a user's snippet of planted mistakes: the public modules must be clean, and
the snippet must give exactly the errors planted in it, which shows that the hints carry
types (a signature of ``Any`` everywhere would pass the first check and fail the second).
Without mypy the test is skipped locally and fails in CI (mypy is in the ``dev`` extra).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gcref

ROOT = Path(__file__).resolve().parents[1]

#: The modules whose public names must be fully annotated and that mypy checks.
PUBLIC_MODULES = [
    "gcref.cli",
    "gcref.complexity",
    "gcref.data",
    "gcref.igr",
    "gcref.losses",
    "gcref.measure",
    "gcref.models",
    "gcref.params",
    "gcref.primitives",
    "gcref.results",
    "gcref.tolerances",
]


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if getattr(obj, "__module__", None) == module.__name__ and (
            inspect.isfunction(obj) or inspect.isclass(obj)
        ):
            yield name, obj


def _callables(name, obj):
    """``(qualified name, function)`` for a function, or a class's own public methods."""
    if inspect.isfunction(obj):
        yield name, obj
        return
    for attr, value in vars(obj).items():
        if attr.startswith("_") and attr not in ("__init__", "__call__"):
            continue
        if isinstance(value, property):
            value = value.fget
        elif isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if inspect.isfunction(value):
            yield f"{name}.{attr}", value


def _missing_annotations(fn):
    sig = inspect.signature(fn)
    missing = [
        p.name for p in sig.parameters.values()
        if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    if sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def test_every_public_function_and_method_is_annotated():
    incomplete = {}
    count = 0
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name, obj in _public_names(module):
            for qualname, fn in _callables(name, obj):
                count += 1
                missing = _missing_annotations(fn)
                if missing:
                    incomplete[f"{module_name}.{qualname}"] = missing
    assert count > 100, f"only {count} public callables found: the scan is broken"
    assert not incomplete, f"public callables without annotations: {incomplete}"


def test_the_scan_finds_a_missing_annotation():
    def half_typed(x: int, y):
        return x

    def typed(x: int) -> int:
        return x

    assert _missing_annotations(half_typed) == ["y", "return"]
    assert _missing_annotations(typed) == []


def test_py_typed_marks_the_package():
    assert (Path(gcref.__file__).parent / "py.typed").is_file()


def _toml():
    for name in ("tomllib", "tomli"):
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    message = "reading pyproject.toml needs Python 3.11 (tomllib) or tomli"
    if os.environ.get("CI"):
        pytest.fail(message + ": CI must type-check the public modules")
    pytest.skip(message)


def _mypy_config():
    tomllib = _toml()
    with open(ROOT / "pyproject.toml", "rb") as fh:
        pyproject = tomllib.load(fh)
    config = pyproject.get("tool", {}).get("mypy")
    assert config, "pyproject.toml has no [tool.mypy] section"
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    assert any(re.match(r"mypy\b", req) for req in dev), "mypy must be in the dev extra"
    return config


def test_mypy_checks_every_public_module():
    files = set(_mypy_config()["files"])
    expected = {m.replace(".", "/") + ".py" for m in PUBLIC_MODULES}
    assert expected <= files, f"[tool.mypy] files lacks {sorted(expected - files)}"


# A user's code with two planted mistakes (lines marked ``# error: code``) among uses that
# are right, including the return types the overloads choose.
SNIPPET = """\
import numpy as np

import gcref.models as gm
from gcref.measure import summary
from gcref.results import Complexity, GradNorms

X = np.zeros((4, 3))
model = object()
value: float = gm.geometric_complexity(model, X)
per: Complexity = gm.geometric_complexity(model, X, per_example=True)
norms: GradNorms = gm.output_grad_sq_norms(model, X)
stats: dict[str, float] = summary(norms.total)
name: str = gm.mean_loss(model, (X, X), "squared")  # error: assignment
gm.igr_terms(model, (X, X), "squared", batch_size="all")  # error: arg-type
"""


@pytest.mark.slow
def test_mypy_passes_on_the_public_modules_and_catches_planted_errors(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        message = "mypy is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must type-check the public modules")
        pytest.skip(message)
    config = _mypy_config()
    snippet = tmp_path / "user_code.py"
    snippet.write_text(SNIPPET)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--show-error-codes",
         *config["files"], str(snippet)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    in_gcref = [line for line in errors if not line.startswith(str(snippet))]
    assert not in_gcref, "mypy errors in the public modules:\n" + "\n".join(in_gcref) + proc.stderr
    planted = {
        i + 1: code for i, line in enumerate(SNIPPET.splitlines())
        for code in re.findall(r"# error: ([\w-]+)", line)
    }
    found = {}
    for line in errors:
        m = re.match(rf"{re.escape(str(snippet))}:(\d+): error: .*\[([\w-]+)\]$", line)
        assert m, line
        found[int(m.group(1))] = m.group(2)
    assert found == planted, textwrap.indent(proc.stdout, "  ")
