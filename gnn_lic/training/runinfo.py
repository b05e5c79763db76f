"""What a training run records besides its checkpoints: environment, CSV logs, RNG states."""

from __future__ import annotations

import csv
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Dict, Mapping, Optional, Sequence

import torch

from gnn_lic.training.config import ConfigError
from gnn_lic.training.distributed import DistContext

__all__ = ["environment_info", "lock_run_dir", "rng_state", "set_rng_state", "truncate_csv", "CSVLog"]


def lock_run_dir(run_dir: Path) -> Optional[IO[str]]:
    """Lock ``run_dir/.lock`` exclusively (POSIX ``flock``; nothing where ``fcntl`` is missing), so that
    two processes never train in one run folder (e.g. a job resumed twice). Returns the open file:
    closing it, or the process ending, releases the lock. Raises a one-line ``ConfigError`` when
    another process holds it."""
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fh = open(Path(run_dir) / ".lock", "a", encoding="utf-8")  # noqa: SIM115 - held until fit() ends
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError(f"run folder '{run_dir}' is in use by another training process") from None
    return fh


def _git_commit() -> Optional[Dict[str, Any]]:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20)
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def _version(module: str) -> Optional[str]:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "unknown"))
    except ImportError:
        return None


def environment_info(ctx: Optional[DistContext] = None, seed: Optional[int] = None) -> Dict[str, Any]:
    """Versions, threads, device, world size, git commit: what ``env.json`` records."""
    ctx = ctx or DistContext()
    dev = ctx.device
    info: Dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "compressai": _version("compressai"),
        "torch_geometric": _version("torch_geometric"),
        "numpy": _version("numpy"),
        "gnn_lic": _version("gnn_lic"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": str(dev),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "world_size": ctx.world_size,
        "backend": ctx.backend or None,
        "seed": seed,
        "argv": list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git_commit(),
    }
    return info


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    if isinstance(state.get("torch"), torch.Tensor):
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def truncate_csv(path: Path, last_step: int) -> None:
    """Drop the rows of ``path`` logged after ``last_step`` (steps of a killed run past its checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    keep = [r for r in body if r and r[0].isdigit() and int(r[0]) <= last_step]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(keep)


class CSVLog:
    """Append rows to a CSV file (header written when the file is new), flushed per row."""

    def __init__(self, path: Path, columns: Sequence[str]):
        self.path = path
        self.columns = list(columns)
        new = not path.exists() or path.stat().st_size == 0
        if not new:
            with open(path, newline="") as fh:
                header = next(csv.reader(fh), [])
            if header != self.columns:  # a resumed run with other columns: start a fresh file
                path.rename(path.with_suffix(".old.csv"))
                new = True
        self.fh = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self.writer.writeheader()
            self.fh.flush()

    def write(self, row: Mapping[str, Any]) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in self.columns})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v
