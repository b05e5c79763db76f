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


def test_parallel_loops_follow_torch_threads_and_keep_them():
    """A parallel loop runs on PyTorch's thread count, and PyTorch's count is the same afterwards (numba's
    OpenMP layer shares the runtime: its first parallel region changed the count from 1 to 2)."""
    import numpy as np

    from gnn_lic.graph.sparse import _take_columns_kernel

    seen = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            out = np.zeros((2, 5), np.float32)
            compiled.parallel(_take_columns_kernel, np.ones((2, 5), np.float32), np.arange(5), out)
            seen.append((compiled.numba.get_num_threads(), torch.get_num_threads(), float(out.sum())))
    finally:
        torch.set_num_threads(previous)
    cap = compiled.numba.config.NUMBA_NUM_THREADS
    assert seen == [(1, 1, 10.0), (min(2, cap), 2, 10.0), (1, 1, 10.0)]


def test_first_parallel_loop_of_a_process_keeps_torch_threads():
    """In a fresh process, the first parallel region (which starts numba's threading layer) must not
    change PyTorch's thread count: a training job resumed in a new process would otherwise run its
    convolutions on another number of threads than the uninterrupted job at the same step."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "from gnn_lic.graph.sparse import take_columns\n"
            "take_columns(torch.randn(3, 50), torch.arange(50))\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"