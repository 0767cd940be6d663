"""Shared fixtures: the ``xp`` backend matrix and Hypothesis profiles.

``xp`` runs a test on NumPy and array_api_strict always, on torch when it is
installed, and on CuPy only when a GPU works (SciPy's pattern), so CPU-only CI
stays green while a GPU machine exercises the same tests.
"""

import importlib.util
import os

import pytest
from hypothesis import HealthCheck, settings

from minicrate.core.backend import cupy_available, get_backend

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=15,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _backends():
    names = ["numpy", "array_api_strict"]
    if importlib.util.find_spec("torch") is not None:
        names.append("torch")
    if cupy_available():
        names.append("cupy")
    return names


BACKENDS = _backends()


@pytest.fixture(params=BACKENDS)
def xp(request):
    """An array namespace; float64 is always available on each."""
    return get_backend(request.param)


@pytest.fixture
def strict():
    return get_backend("array_api_strict")
