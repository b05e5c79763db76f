"""A training job killed with SIGKILL mid-run resumes to the same weights as an uninterrupted one.

Unlike ``--stop-after`` (a clean stop), the killed process may have logged steps past its
last checkpoint and may be killed while writing; ``--resume`` must still continue exactly.
"""

import csv
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
STEPS = 24


def _cmd(train, test, out, *extra):
    return [sys.executable, str(REPO / "experiments" / "run.py"), "--model", "glic", "--size", "tiny",
            "--steps", str(STEPS), "--batch-size", "1", "--patch-size", "64", "--lambdas", "0.01",
            "--data-train", str(train), "--data-test", str(test), "--out", str(out), "--no-progress",
            "--threads", "1", "--device", "cpu", "--save-every", "3", "--eval-every", "100", *extra]


def _latest(job):
    return job / "lambda-0.01" / "checkpoints" / "latest.pt"


def _saved_step(path):
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:  # not there yet (atomic writes: never a partial file)
        return 0


def _logged(run):
    """Last step in ``run/log.csv`` (0 when none)."""
    try:
        with open(run / "log.csv") as fh:
            steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("step", "").isdigit()]
    except OSError:
        return 0
    return steps[-1] if steps else 0


def _stop(proc):
    """Send SIGSTOP and wait until the process is stopped (state ``T`` in ``/proc``)."""
    proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{proc.pid}/stat")
    for _ in range(1000):
        if stat.read_text().rsplit(")", 1)[1].split()[0] in "Tt":
            return
        time.sleep(0.001)
    raise AssertionError("the job did not stop")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path, data_dirs, job_env):
    train, test = data_dirs
    straight = subprocess.run(_cmd(train, test, tmp_path / "a"), env=job_env, capture_output=True, text=True,
                              timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    job_a = Path(re.search(r"run folder: (.+)$", straight.stdout, re.M).group(1).strip())

    proc = subprocess.Popen(_cmd(train, test, tmp_path / "b"), env=job_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while True:
            jobs = list((tmp_path / "b").glob("*/lambda-0.01"))
            # kill between two checkpoints, once steps past the last one are logged; the job is stopped
            # (SIGSTOP) while its files are read, so they cannot move on between the check and the kill
            if jobs and _logged(jobs[0]) % 3 and _saved_step(_latest(jobs[0].parent)) >= 3:
                _stop(proc)
                if _logged(jobs[0]) % 3 and _saved_step(_latest(jobs[0].parent)) >= 3:
                    break
                proc.send_signal(signal.SIGCONT)
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    job_b = jobs[0].parent
    killed_at = _saved_step(_latest(job_b))
    assert 3 <= killed_at < _logged(job_b / "lambda-0.01") < STEPS  # the log ran ahead of the checkpoint

    resumed = subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), "--resume", str(job_b),
                              "--no-progress", "--threads", "1"], env=job_env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(_latest(job_a), weights_only=True)
    b = torch.load(_latest(job_b), weights_only=True)
    assert a["step"] == b["step"] == STEPS
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    with open(job_b / "lambda-0.01" / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(1, STEPS + 1))
    assert (job_b / "results" / "glic-tiny.json").is_file()
