"""Model complexity: parameters, FLOPs, latency and peak memory.

The columns of the GLIC paper's Table 2 (params in M, FLOPs, encode/decode latency,
peak memory) come from :func:`profile_model`.

What is counted, honestly stated
--------------------------------
* **Parameters**: ``sum(p.numel())`` over ``module.parameters()`` (shared parameters
  once). Buffers (e.g. CDF tables of entropy models) are not parameters and are
  reported separately as ``buffers``.
* **FLOPs**: :class:`torch.utils.flop_counter.FlopCounterMode` over one call. It
  counts only the ops in its registry -- dense matrix products (``mm``, ``addmm``,
  ``bmm``, ``baddbmm``), convolutions (incl. transposed) and scaled-dot-product /
  flash / flex attention -- as 2 FLOPs per multiply-accumulate (so FLOPs = 2 x MACs;
  bias additions are not counted). **Not counted**: element-wise ops (activations,
  GDN's square/sqrt, normalisations, additions), sparse ops (``torch.sparse.mm``,
  ``spmm``, PyG's scatter/gather message passing, ``index_add``...), kNN/graph
  construction, and entropy coding (range coder work in ``compress``/``decompress``
  runs outside torch). For graph models the number is therefore a lower bound; the
  per-op breakdown returned in ``flops_by_op`` shows exactly what was counted.
* **Latency**: wall time of a callable, median of ``n_runs`` timed runs after
  ``warmup`` untimed ones, under ``torch.no_grad()``; on CUDA the device is
  synchronised before and after each run.
* **Peak memory**:
  - CUDA: ``torch.cuda.max_memory_allocated()`` during the call minus the memory
    allocated just before it (tensor memory seen by PyTorch's caching allocator;
    the model weights and input are in the baseline, not in the increase).
  - CPU: measured in a **fresh subprocess**, because the process-wide high-water mark
    (``ru_maxrss`` / ``VmHWM``) only grows: the parent's history would pollute it. The
    child loads the pickled module and input, reads its current RSS (baseline),
    resets the kernel's high-water mark (writing ``5`` to ``/proc/self/clear_refs``,
    Linux >= 4.0), runs the call once and reads ``VmHWM``. The increase
    ``peak - baseline`` is the extra resident memory the call needed (activations,
    workspace, allocator growth, and the one-time lazy initialisation of a first call
    in a fresh process, e.g. a few MiB for oneDNN/thread pools). Without ``clear_refs`` the child falls back to
    ``ru_maxrss`` (an upper bound, flagged in ``method``). The module (and a custom
    ``fn``) must be picklable and importable in a fresh interpreter; the parent's
    ``sys.path`` is passed on.
"""

from __future__ import annotations

import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from gnn_lic.utils import module_device, process_memory

__all__ = [
    "process_memory",
    "reset_peak_memory",
    "count_parameters",
    "count_flops",
    "measure_latency",
    "peak_memory",
    "profile_model",
    "compress_decompress",
]


def reset_peak_memory() -> bool:
    """Reset the kernel's high-water mark of this process (``VmHWM``) to its current RSS.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0); returns False where that fails.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return int(
        sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
    )


def _make_input(module: nn.Module | None, inputs, device=None, dtype=torch.float32):
    if isinstance(inputs, torch.Tensor):
        x = inputs
    else:
        x = torch.rand(*tuple(inputs), dtype=dtype)
    if device is None and module is not None:
        device = module_device(module)
    return x.to(device) if device is not None else x


def count_flops(
    fn: nn.Module | Callable[..., Any],
    inputs: torch.Tensor | Sequence[int],
    *extra_args: Any,
) -> dict:
    """FLOPs of one call ``fn(x, *extra_args)`` (forward for a module), no grad.

    ``inputs`` is a tensor or a shape (a uniform random tensor is made). Returns
    ``{"flops": int, "gflops": float, "by_op": {op name: flops}, "by_module":
    {module path: flops}}``. See the module docstring for what is (not) counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    module = fn if isinstance(fn, nn.Module) else None
    x = _make_input(module, inputs)
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        fn(x, *extra_args)
    counts = counter.get_flop_counts()
    by_op = {str(op): int(v) for op, v in counts.get("Global", {}).items()}
    by_module = {
        name: int(sum(d.values())) for name, d in counts.items() if name != "Global"
    }
    total = int(counter.get_total_flops())
    return {"flops": total, "gflops": total / 1e9, "by_op": by_op, "by_module": by_module}


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    fn: Callable[..., Any],
    *args: Any,
    n_runs: int = 10,
    warmup: int = 2,
    device: str | torch.device | None = None,
    grad: bool = False,
    **kwargs: Any,
) -> dict:
    """Time ``fn(*args, **kwargs)``: median/mean/min/max seconds over ``n_runs`` runs.

    ``warmup`` untimed calls come first. Runs under ``torch.no_grad()`` unless ``grad``
    (to time a backward pass). Pass ``device`` (or CUDA tensors in ``args``) to
    synchronise CUDA around each run.
    """
    if n_runs < 1:
        raise ValueError("n_runs must be >= 1")
    if device is None:
        for a in args:
            if isinstance(a, torch.Tensor):
                device = a.device
                break
    times = []
    with torch.set_grad_enabled(grad):
        for _ in range(warmup):
            fn(*args, **kwargs)
        for _ in range(n_runs):
            _sync(device)
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "max_s": max(times),
        "n_runs": n_runs,
        "warmup": warmup,
        "times_s": times,
    }


def compress_decompress(module: nn.Module, x: torch.Tensor):
    """``module.decompress(**module.compress(x))``-style round trip (CompressAI API).

    Top-level so it can be pickled into the memory-measuring subprocess.
    """
    out = module.compress(x)
    return module.decompress(out["strings"], out["shape"])


_CHILD = r"""
import pickle, resource, sys
import torch
from gnn_lic.evaluation.complexity import process_memory, reset_peak_memory
job = pickle.load(open(sys.argv[1], "rb"))
torch.set_num_threads(job["threads"])
module = job["module"]
module.eval()
x = job["x"]
fn = job["fn"]
call = getattr(module, fn) if isinstance(fn, str) else (lambda m_x: fn(module, m_x))
base = process_memory("VmRSS") // 1024
method = "clear_refs+VmHWM" if reset_peak_memory() else "ru_maxrss (upper bound: includes peaks before the call)"
with torch.no_grad():
    call(x)
if method.startswith("clear_refs"):
    peak = process_memory("VmHWM") // 1024
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("RESULT", base, peak, method, sep="\t")
"""


def peak_memory(
    module: nn.Module,
    inputs: torch.Tensor | Sequence[int],
    fn: str | Callable[[nn.Module, torch.Tensor], Any] = "forward",
    device: str | torch.device | None = None,
    timeout: float = 600,
) -> dict:
    """Peak memory of one call of ``module.<fn>(x)`` (or ``fn(module, x)``), no grad.

    Returns ``{"peak_bytes": increase over the baseline, "baseline_bytes",
    "peak_total_bytes", "device", "method"}``. See the module docstring for the method
    (CPU: fresh subprocess with a reset high-water mark; CUDA: allocator statistics).
    """
    device = torch.device(module_device(module) if device is None else device)
    if device.type == "cuda":
        x = _make_input(None, inputs).to(device)
        module = module.to(device)
        call = getattr(module, fn) if isinstance(fn, str) else (lambda t: fn(module, t))
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            call(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "peak_bytes": int(peak - base),
            "baseline_bytes": int(base),
            "peak_total_bytes": int(peak),
            "device": str(device),
            "method": "torch.cuda.max_memory_allocated",
        }
    if device.type != "cpu":
        raise ValueError(f"unsupported device {device}")
    x = _make_input(None, inputs).cpu()
    job = {"module": module.cpu(), "x": x, "fn": fn, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        job_path = os.path.join(tmp, "job.pkl")
        with open(job_path, "wb") as f:
            pickle.dump(job, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, job_path],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT\t")][-1]
    _, base_kb, peak_kb, method = line.split("\t")
    base_b, peak_b = int(base_kb) * 1024, int(peak_kb) * 1024
    return {
        "peak_bytes": max(0, peak_b - base_b),
        "baseline_bytes": base_b,
        "peak_total_bytes": peak_b,
        "device": "cpu",
        "method": method,
    }


def profile_model(
    net: nn.Module,
    input_shape: Sequence[int] = (1, 3, 512, 768),
    encode_fn: Callable[[torch.Tensor], Any] | None = None,
    decode_fn: Callable[[Any], Any] | None = None,
    device: str | torch.device | None = None,
    n_runs: int = 5,
    warmup: int = 1,
    measure_memory: bool = True,
) -> dict:
    """Table-2 style complexity summary of a model for one input shape.

    * ``params``/``params_M``; FLOPs of ``net(x)`` (forward) as ``flops``,
      ``gflops``, ``tflops`` plus ``flops_by_op``;
    * ``forward_latency_s`` (median);
    * ``encode_latency_s`` / ``decode_latency_s`` (median): ``encode_fn(x)`` and
      ``decode_fn(encode_fn(x))`` if given, otherwise ``net.compress(x)`` and
      ``net.decompress(strings, shape)`` when the model has them (CompressAI API;
      ``net.update()`` is called first if present), else None;
    * ``peak_memory_bytes``/``peak_memory_MiB``: extra memory of one encode+decode
      round trip when the model has compress/decompress and no custom functions are
      given, else of one forward (see :func:`peak_memory`); ``peak_memory_of`` says
      which.

    The input is uniform noise of ``input_shape`` (latency of learned codecs depends
    little on content; entropy-coding time does somewhat).
    """
    net = net.eval()
    if device is not None:
        net = net.to(device)
    dev = module_device(net)
    torch.manual_seed(0)
    x = torch.rand(*tuple(input_shape)).to(dev)
    out: dict[str, Any] = {
        "input_shape": list(input_shape),
        "device": str(dev),
        "params": count_parameters(net),
        "buffers": int(sum(b.numel() for b in net.buffers())),
    }
    out["params_M"] = out["params"] / 1e6
    fl = count_flops(net, x)
    out.update(
        flops=fl["flops"], gflops=fl["flops"] / 1e9, tflops=fl["flops"] / 1e12, flops_by_op=fl["by_op"]
    )
    out["flops_counted"] = "matmul/conv/attention FLOPs (2 per MAC) of forward(); sparse, element-wise and entropy coding not counted"
    out["forward_latency_s"] = measure_latency(net, x, n_runs=n_runs, warmup=warmup)["median_s"]

    has_codec = hasattr(net, "compress") and hasattr(net, "decompress")
    if encode_fn is None and decode_fn is None and has_codec:
        if hasattr(net, "update"):
            net.update()
        encode_fn = net.compress
        decode_fn = lambda enc: net.decompress(enc["strings"], enc["shape"])  # noqa: E731
    out["encode_latency_s"] = None
    out["decode_latency_s"] = None
    if encode_fn is not None:
        out["encode_latency_s"] = measure_latency(encode_fn, x, n_runs=n_runs, warmup=warmup)["median_s"]
        if decode_fn is not None:
            with torch.no_grad():
                enc = encode_fn(x)
            out["decode_latency_s"] = measure_latency(
                decode_fn, enc, n_runs=n_runs, warmup=warmup, device=dev
            )["median_s"]
    out["latency_n_runs"] = n_runs

    if measure_memory:
        if has_codec and encode_fn is not None and getattr(encode_fn, "__self__", None) is net:
            mem = peak_memory(net, x, fn=compress_decompress, device=dev)
            out["peak_memory_of"] = "compress+decompress"
        else:
            mem = peak_memory(net, x, fn="forward", device=dev)
            out["peak_memory_of"] = "forward"
        out["peak_memory_bytes"] = mem["peak_bytes"]
        out["peak_memory_MiB"] = mem["peak_bytes"] / 2**20
        out["peak_memory_method"] = mem["method"]
    return out
