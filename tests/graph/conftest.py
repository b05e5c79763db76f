"""Every graph test runs twice: with the compiled row loops (numba) and in pure PyTorch.

Except ``test_rowkernels.py``, which compares the two paths itself in every test: it runs once.
"""

import pytest

from gnn_lic.graph import _rowkernels

PATHS = ["compiled", "torch"]
#: test modules that switch between the paths themselves
_SELF_COMPARING = ("test_rowkernels.py",)


def pytest_generate_tests(metafunc):
    if "construction_path" in metafunc.fixturenames:
        own = metafunc.definition.path.name in _SELF_COMPARING
        metafunc.parametrize("construction_path", [None] if own else PATHS, indirect=True)


@pytest.fixture(autouse=True)
def construction_path(request):
    if request.param is None:  # a self-comparing module: leave the switch alone
        yield None
        return
    previous = _rowkernels.set_enabled(request.param == "compiled")
    yield request.param
    _rowkernels.set_enabled(previous)
