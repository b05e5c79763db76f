"""Fixtures shared by every test folder."""

import contextlib

import pytest

from gnn_lic.models import registry


@contextlib.contextmanager
def registry_scope():
    """A copy of the global model registry for the duration of the block; the global one is restored after.

    Models registered inside (stand-ins of the tests) never leak into other tests.
    """
    saved = registry._MODELS
    registry._MODELS = dict(saved)
    try:
        yield registry._MODELS
    finally:
        registry._MODELS = saved


@pytest.fixture
def scoped_registry():
    """The model registry as a scoped copy for one test (see :func:`registry_scope`)."""
    with registry_scope() as models:
        yield models


@pytest.fixture(scope="module")
def module_registry():
    """The model registry as a scoped copy for one test module."""
    with registry_scope() as models:
        yield models
