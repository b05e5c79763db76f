"""Fixtures shared by every test folder."""

import contextlib
import importlib.util
import os
from pathlib import Path

import pytest

from gnn_lic.models import registry


def pytest_configure(config):
    """In a pytest-xdist worker, share the cores with the other workers: each worker, and the processes its
    tests start without a thread count of their own, takes cores / workers threads instead of all of them
    (oversubscribed OpenMP threads wait on each other). Tests that choose a thread count still set it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


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


@pytest.fixture
def compiled_on():
    """The compiled loops switched on for one test, whatever ``GNN_LIC_NUMBA`` says (tests of the loops
    themselves); the setting is restored after."""
    from gnn_lic import compiled

    previous = compiled.set_enabled(True)
    try:
        yield
    finally:
        compiled.set_enabled(previous)


@pytest.fixture(scope="session")
def paper_model():
    """``paper_model(name)``: the paper-size model ``name``, built once per test run (read-only use)."""
    from gnn_lic.models import create_model

    built = {}

    def get(name: str):
        if name not in built:
            built[name] = create_model(name, size="paper")
        return built[name]

    return get


def _load_script(name: str):
    """``experiments/<name>.py`` imported as a module (a script, not a package)."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"gnn_lic_experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def experiment_script():
    """``experiment_script(name)``: ``experiments/<name>.py`` as a module."""
    return _load_script


@pytest.fixture(scope="session")
def run_script():
    """``experiments/run.py`` as a module."""
    return _load_script("run")


@pytest.fixture
def ship():
    """``ship(path, name, size, qualities=(4,))``: list checkpoint ``path`` in the weights index of its
    folder (the zoo's format, its real sha256), next to the entries already there; returns the entry."""
    from gnn_lic.models.zoo import QUALITY_LAMBDAS, WeightsEntry, file_sha256, read_index, write_index

    def add(path, name, size, qualities=(4,)):
        folder = path.parent
        entry = WeightsEntry(name=name, size=size, metric="mse", qualities=tuple(qualities),
                             lambdas=tuple(QUALITY_LAMBDAS["mse"][q - 1] for q in qualities), file=path.name,
                             sha256=file_sha256(path) if path.is_file() else "0" * 64,
                             command="test", data="test", folder=folder)
        write_index([e for e in read_index(folder) if e.file != path.name] + [entry], folder)
        return entry

    return add
