"""The memory budget of large jobs (gnn_lic.codec.budget): the need, the allocator, the announcement."""

import subprocess
import sys

import pytest
import torch

from gnn_lic.codec import budget

RESIDENT = 1 << 30


class Net(torch.nn.Module):
    """Weights of 4000 bytes and an estimate of ``per_pixel`` bytes per pixel besides them."""

    def __init__(self, per_pixel=1000):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1000))
        self.per_pixel = per_pixel

    def memory_estimate(self, h, w):
        return 4000 + h * w * self.per_pixel


@pytest.fixture
def resident(monkeypatch):
    """The process's resident memory, fixed, so that the needs the tests compute are job_plan's."""
    monkeypatch.setattr(budget, "process_memory", lambda key="VmRSS": RESIDENT)


def test_the_need_is_the_process_plus_what_the_job_adds(monkeypatch, resident):
    assert budget.job_need(Net(), 100, 200) == RESIDENT + budget.CODING_BYTES + 100 * 200 * 1000
    plain = torch.nn.Linear(10, 10)  # no estimate: its weights, already resident
    assert budget.job_need(plain, 100, 200) == RESIDENT + budget.CODING_BYTES
    monkeypatch.setattr(budget, "process_memory", lambda key="VmRSS": 0)  # unreadable: the runtime plus the estimate
    assert budget.job_need(Net(), 100, 200) == budget.RUNTIME_BYTES + 4000 + 100 * 200 * 1000
    assert budget.job_need(plain, 100, 200) == budget.RUNTIME_BYTES + 440


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_resident_memory_is_read():
    before = budget.process_memory("VmRSS")
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
    assert before > 0 and budget.process_memory("VmRSS") >= before + (48 << 20)
    del block


SCRIPT = """
import resource, sys, numpy as np, torch
from gnn_lic.codec import decode_image, encode_image
from gnn_lic.codec.budget import job_need
from gnn_lic.models import create_model
net = create_model(sys.argv[1], size="tiny").eval()
net.update(force=True)
image = np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)
need = job_need(net, 256, 384)
decode_image(net, encode_image(net, image))
print(need, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in kilobytes on Linux")
@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_the_need_covers_a_real_jobs_peak(name):
    """A whole process (libraries, model, a round trip) stays within the need job_plan computes for it."""
    run = subprocess.run([sys.executable, "-c", SCRIPT, name], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    need, peak = map(int, run.stdout.split()[-2:])
    assert peak <= need, f"peak {peak / 2**30:.2f} GiB over the estimated need {need / 2**30:.2f} GiB"


def test_allocator_tuned_only_where_the_budget_leaves_room(monkeypatch, resident):
    """job_plan keeps freed memory (tune_malloc) when the budget holds TUNE_HEADROOM times the need."""
    calls = []
    monkeypatch.setattr(budget, "tune_malloc", lambda: calls.append(1) or True)
    need = budget.job_need(Net(), 100, 100)
    with budget.job_plan(Net(), 100, 100, str(int(need * budget.TUNE_HEADROOM) - 1), "net"):
        pass
    assert calls == []  # fits, but without the headroom
    with budget.job_plan(Net(), 100, 100, str(int(need * budget.TUNE_HEADROOM) + 1), "net"):
        pass
    assert calls == [1]
    with pytest.raises(budget.MemoryBudgetError, match="needs about"):
        with budget.job_plan(Net(), 100, 100, str(need - 1), "net"):
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch's huge-page switch is Linux's")
def test_large_images_without_the_tuned_allocator_suggest_huge_pages(monkeypatch, capsys, resident):
    """The line announcing a large job names THP_MEM_ALLOC_ENABLE exactly where the allocator is left as it
    is and the variable is not set already."""
    monkeypatch.setattr(budget, "tune_malloc", lambda: True)
    monkeypatch.delenv(budget.THP_ENV, raising=False)
    side = 2000
    need = budget.job_need(Net(1), side, side)

    def line(max_memory, h=side):
        with budget.job_plan(Net(1), h, side, str(max_memory), "net"):
            pass
        return capsys.readouterr().err

    tight, roomy = int(need * budget.TUNE_HEADROOM) - 1, int(need * budget.TUNE_HEADROOM) + 1
    assert "about" in line(tight) and budget.THP_ENV in line(tight)
    assert "about" in line(roomy) and budget.THP_ENV not in line(roomy)
    assert line(tight, h=10) == ""  # small images get no line
    monkeypatch.setattr(budget, "tune_malloc", lambda: False)  # the allocator could not be tuned
    assert budget.THP_ENV in line(roomy)
    monkeypatch.setenv(budget.THP_ENV, "1")
    assert "about" in line(tight) and budget.THP_ENV not in line(tight)


def test_time_estimates_count_the_untuned_allocators_slowdown(monkeypatch, capsys, resident):
    """Where the allocator is left as it is, the announced time is UNTUNED_SLOWDOWN times the calibrated one."""
    monkeypatch.setattr(budget, "tune_malloc", lambda: True)
    side = 3000
    need = budget.job_need(Net(1), side, side)

    def minutes(max_memory):
        with budget.job_plan(Net(1), side, side, str(max_memory), "net", calibrate=lambda crop: 60.0 * crop):
            pass
        return float(capsys.readouterr().err.split(" and ")[1].split(" min")[0])

    assert minutes(int(need * budget.TUNE_HEADROOM) - 1) == pytest.approx(
        minutes(int(need * budget.TUNE_HEADROOM) + 1) * budget.UNTUNED_SLOWDOWN, rel=0.01)
