"""The codec tests' stand-in models, registered in a registry scoped to each test module."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import codec_testmodels  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _stand_in_models(module_registry):
    codec_testmodels.register()
    yield
