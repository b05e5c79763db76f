"""The main job: train (one variable-rate model, or one per lambda), evaluate with real bitstreams, report.

Usage::

    python experiments/run.py --model glic                      # the default job
    python experiments/run.py --model gabic --lambdas mse --steps 20000 --size paper --device cuda
    python experiments/run.py --config experiments/configs/smoke.yaml --steps 10
    python experiments/run.py --config experiments/configs/gabic.yaml --device cuda   # GABIC's recipe
    python experiments/run.py --resume runs/glic-small-mse-20250101-120000   # continue a killed job
    python experiments/run.py --checkpoint a.pt b.pt --anchors               # evaluate only
    torchrun --nproc_per_node=2 experiments/run.py --model glic             # DDP (gloo on CPU, NCCL on GPU)

The options are the fields of ``gnn_lic.training.TrainConfig`` and
``gnn_lic.training.options.JobOptions`` (``--help`` lists them); precedence: built-in
defaults < the resumed job's ``config.yaml`` < ``--config FILE.yaml`` < flags. What the job
does and writes: :mod:`gnn_lic.training.job`. Bad arguments print one line
``run.py: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gnn_lic.training import job  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments)."""
    return job.main(argv, prog="run.py")


if __name__ == "__main__":
    sys.exit(main())
