"""Every graph test runs twice: with the compiled row loops (numba) and in pure PyTorch."""

import pytest

from gnn_lic.graph import _rowkernels

PATHS = ["compiled", "torch"] if _rowkernels.numba is not None else ["torch"]


@pytest.fixture(autouse=True, params=PATHS)
def construction_path(request):
    previous = _rowkernels.set_enabled(request.param == "compiled")
    yield request.param
    _rowkernels.set_enabled(previous)
