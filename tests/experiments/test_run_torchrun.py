"""``torchrun --nproc_per_node=2 experiments/run.py``: DDP with gloo on the CPU."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path, data_dirs, job_env):
    train, test = data_dirs
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "experiments" / "run.py"), "--model", "glic", "--size", "tiny", "--steps", "2",
           "--batch-size", "1", "--patch-size", "64", "--lambdas", "0.01", "--data-train", str(train),
           "--data-test", str(test), "--out", str(tmp_path / "runs"), "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=job_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = re.findall(r"run folder: (.+)$", proc.stdout, re.M)
    assert len(folders) == 1, proc.stdout  # rank 0 alone reports
    job = Path(folders[0].strip())
    run = job / "lambda-0.01"
    env_json = json.loads((run / "env.json").read_text())
    assert env_json["world_size"] == 2 and env_json["backend"] == "gloo"
    with open(run / "log.csv") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2"]
    assert (run / "checkpoints" / "latest.pt").is_file() and (job / "results" / "glic-tiny.json").is_file()
