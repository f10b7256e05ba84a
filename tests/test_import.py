"""``import gcref`` loads NumPy and nothing heavier; frameworks load with their backend."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "jax", "autograd", "scipy", "matplotlib")


def _modules_after(code):
    """Names among HEAVY present in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = code + "\nimport sys\nprint(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_gcref_imports_no_framework():
    assert _modules_after("import gcref") == []


def test_listing_backends_imports_no_framework():
    assert _modules_after("import gcref; gcref.available_backends(); gcref.backend_names()") == []


@pytest.mark.parametrize(
    "module",
    ["gcref.complexity", "gcref.transfer", "gcref.igr", "gcref.norms", "gcref.geometry",
     "gcref.training", "gcref.backward_error", "gcref.optimizers", "gcref.rescaling", "gcref.cli",
     "gcref.models", "gcref.nets", "gcref.penalties", "gcref.data", "gcref.results",
     "gcref.params", "gcref.backends.adapter", "gcref.backends.mlp_model",
     "gcref.backends.torch_layers", "gcref.testing"],
)
def test_feature_modules_import_no_framework(module):
    assert _modules_after(f"import {module}") == []


def test_a_backend_loads_its_framework_and_no_other():
    loaded = _modules_after("import gcref; gcref.get_backend('autograd')")
    # autograd's logsumexp lives in autograd.scipy, which imports SciPy itself.
    assert "autograd" in loaded and "torch" not in loaded and "jax" not in loaded
