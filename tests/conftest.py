"""Hypothesis profiles and the backend fixtures shared by every test.

Profiles: ``dev`` (fast, the default), ``ci`` (selected when ``CI`` is set; 200 examples
per property) and ``thorough`` (10,000 per property, ``HYPOTHESIS_PROFILE=thorough``).
With ``CI`` set, a backend that is not installed fails the run instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from hypothesis import HealthCheck, settings

import gcref

_COMMON = dict(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        # The backend fixtures only name a backend: nothing to reset between examples.
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile("dev", max_examples=25, **_COMMON)
settings.register_profile("ci", max_examples=200, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=10_000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))



def pytest_configure(config):
    # The test problems are tiny: torch's intra-op threads cost far more than they save
    # on a 2-core machine (20x on input_jacobian over 256 points, measured here).
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)


AUTODIFF_BACKENDS = [name for name in gcref.backend_names() if name != "numpy"]


def require_backend(name):
    """Return the backend, skipping when absent locally and failing when absent in CI."""
    if name not in gcref.available_backends():
        message = f"backend {name!r} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must exercise every backend)")
        pytest.skip(message)
    return gcref.get_backend(name)


@pytest.fixture(params=gcref.backend_names(), ids=lambda name: f"backend={name}")
def backend(request):
    """Every backend, ``numpy`` included."""
    return require_backend(request.param).name


@pytest.fixture(params=AUTODIFF_BACKENDS, ids=lambda name: f"backend={name}")
def autodiff_backend(request):
    """Every backend that differentiates by autodiff (all but ``numpy``)."""
    return require_backend(request.param).name
