"""What both benchmarks share: best-of timing, and one fresh process per configuration
(``python -m gnn_lic.bench _child TASK ARGS``), so that each one's peak memory is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

from gnn_lic.evaluation.complexity import measure_latency

__all__ = ["timeit", "run_child"]


def timeit(fn, repeat: int = 3, grad: bool = False) -> float:
    """Best of ``repeat`` timed calls after one warm-up (candidate caches, allocator)."""
    return measure_latency(fn, n_runs=repeat, warmup=1, grad=grad)["min_s"]


def run_child(task: str, args: List) -> Dict:
    """Run ``task(*args)`` in a fresh ``python -m gnn_lic.bench _child`` process; its JSON result."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "gnn_lic.bench", "_child", task, json.dumps(args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child {task}{args} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
