"""The package-wide switch and decorator of the compiled loops (gnn_lic.compiled)."""

import torch

from gnn_lic import compiled
from gnn_lic.graph import _rowkernels


def test_jit_falls_back_without_a_cache_directory(monkeypatch):
    calls = []

    def fake_njit(**kwargs):
        calls.append(kwargs)
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return lambda fn: fn

    monkeypatch.setattr(compiled.numba, "njit", fake_njit)

    def f():
        return 1

    assert compiled.jit(f) is f
    assert compiled.jit(parallel=True)(f) is f
    assert calls == [dict(cache=True, nogil=True, error_model="numpy"), dict(nogil=True, error_model="numpy"),
                     dict(cache=True, nogil=True, error_model="numpy", parallel=True),
                     dict(nogil=True, error_model="numpy", parallel=True)]


def test_one_switch_for_every_compiled_loop():
    previous = compiled.set_enabled(False)
    try:
        assert not compiled.enabled() and not _rowkernels.enabled(torch.zeros(2))
        assert _rowkernels.set_enabled(True) is False
        assert compiled.enabled() and _rowkernels.enabled(torch.zeros(2))
    finally:
        compiled.set_enabled(previous)


def test_parallel_loops_follow_torch_threads():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        compiled.use_torch_threads()
        assert compiled.numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
        compiled.use_torch_threads()
