"""The memory budget of large jobs (gnn_lic.codec.budget): the need, the allocator, the announcement."""

import mmap
import subprocess
import sys

import pytest
import torch

from gnn_lic.codec import budget

RESIDENT = 1 << 30
PARTIAL = 256 << 20


class Net(torch.nn.Module):
    """Weights of 4000 bytes and an estimate of ``per_pixel`` bytes per pixel besides them; freed blocks below
    ``PARTIAL`` are worth keeping under a tight budget."""

    partial_mmap_threshold = PARTIAL

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
    # 64 MiB of new pages, touched (an anonymous map: the allocator could hand back memory already resident)
    block = mmap.mmap(-1, 64 << 20)
    for i in range(0, len(block), mmap.PAGESIZE):
        block[i] = 1
    assert before > 0 and budget.process_memory("VmRSS") >= before + (48 << 20)
    block.close()


SCRIPT = """
import sys, numpy as np, torch
from gnn_lic.codec import decode_image, encode_image
from gnn_lic.codec.budget import job_need
from gnn_lic.models import create_model
from gnn_lic.utils import process_memory
net = create_model(sys.argv[1], size="tiny").eval()
net.update(force=True)
image = np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)
need = job_need(net, 256, 384)
decode_image(net, encode_image(net, image))
print(need, process_memory("VmHWM"))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is read from /proc/self/status")
@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_the_need_covers_a_real_jobs_peak(name):
    """A whole process (libraries, model, a round trip) stays within the need job_plan computes for it.

    The peak is the process's own high-water mark (``VmHWM``, reset by ``exec``), not ``ru_maxrss``,
    which Linux carries over from the forking parent: a test worker already holding gigabytes made
    this child look as large."""
    run = subprocess.run([sys.executable, "-c", SCRIPT, name], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    need, peak = map(int, run.stdout.split()[-2:])
    assert peak <= need, f"peak {peak / 2**30:.2f} GiB over the estimated need {need / 2**30:.2f} GiB"


def test_allocator_setting_follows_the_budgets_room(monkeypatch, resident):
    """job_plan keeps freed memory (tune_malloc()) where the budget holds TUNE_HEADROOM times the need, keeps
    blocks below the model's partial_mmap_threshold where it holds the need plus that size (a model without
    one: never), and leaves it as it is below; a setting the allocator refuses falls through to the next."""
    calls = []
    monkeypatch.setattr(budget, "tune_malloc", lambda threshold=None: calls.append(threshold) or True)
    need = budget.job_need(Net(), 100, 100)

    def plan(max_memory, net=Net()):
        calls.clear()
        with budget.job_plan(net, 100, 100, str(max_memory), "net"):
            pass
        return list(calls)

    partial, roomy = need + PARTIAL, int(need * budget.TUNE_HEADROOM) + 1
    assert partial < roomy
    assert plan(partial - 1) == []  # fits, without room for either setting
    assert plan(partial) == [PARTIAL]
    assert plan(roomy - 2) == [PARTIAL]
    assert plan(roomy) == [None]
    plain = Net()
    plain.partial_mmap_threshold = None
    assert plan(roomy - 2, plain) == []
    monkeypatch.setattr(budget, "tune_malloc", lambda threshold=None: calls.append(threshold) or threshold is not None)
    assert plan(roomy) == [None, PARTIAL]
    with pytest.raises(budget.MemoryBudgetError, match="needs about"):
        plan(need - 1)


ALLOCATOR = """
import resource, sys, torch
from gnn_lic.utils import process_memory, tune_malloc
for setting in sys.argv[1].split(","):  # applied in turn: the last one is in force
    assert setting == "system" or tune_malloc(None if setting == "tuned" else int(setting))
for n in range(30):  # band-sized temporaries; the faults of the last 20 are counted
    if n == 10:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(40 << 20, dtype=torch.uint8)
    del block
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
block = torch.ones(300 << 20, dtype=torch.uint8)  # a whole map (numpy's would ask for huge pages)
held = process_memory("VmRSS")
del block
print(faults, held - process_memory("VmRSS"))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_partial_setting_reuses_bands_and_returns_whole_maps():
    """With a 256 MiB threshold, 40 MB temporaries are reused (a fraction of the page faults of the allocator as
    it is), while a freed 300 MiB block still leaves the process; wholly tuned, it stays."""
    def run(setting):
        out = subprocess.run([sys.executable, "-c", ALLOCATOR, setting], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return tuple(map(int, out.stdout.split()))

    system, partial, tuned = run("system"), run(str(256 << 20)), run("tuned")
    assert system[0] > 20 * (40 << 20) // 4096 // 2  # as it is, each block faults in afresh
    assert partial[0] * 10 < system[0] and tuned[0] * 10 < system[0]
    assert partial[1] > 250 << 20 and system[1] > 250 << 20  # returned
    assert tuned[1] < 50 << 20  # kept
    # a later setting replaces the one in force (a tight budget after a roomy one, and back)
    tuned_then_partial, partial_then_tuned = run(f"tuned,{256 << 20}"), run(f"{256 << 20},tuned")
    assert tuned_then_partial[0] * 10 < system[0] and tuned_then_partial[1] > 250 << 20
    assert partial_then_tuned[0] * 10 < system[0] and partial_then_tuned[1] < 50 << 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PyTorch's huge-page switch is Linux's")
def test_large_images_without_the_tuned_allocator_suggest_huge_pages(monkeypatch, capsys, resident):
    """The line announcing a large job names THP_MEM_ALLOC_ENABLE exactly where the allocator is not wholly
    tuned (partly, or left as it is) and the variable is not set already."""
    monkeypatch.setattr(budget, "tune_malloc", lambda threshold=None: True)
    monkeypatch.delenv(budget.THP_ENV, raising=False)
    side = 2000
    need = budget.job_need(Net(1), side, side)

    def line(max_memory, h=side):
        with budget.job_plan(Net(1), h, side, str(max_memory), "net"):
            pass
        return capsys.readouterr().err

    tight, roomy = int(need * budget.TUNE_HEADROOM) - 1, int(need * budget.TUNE_HEADROOM) + 1
    assert "about" in line(tight) and budget.THP_ENV in line(tight)  # the partial setting
    assert budget.THP_ENV in line(need + PARTIAL - 1)  # as it is
    assert "256 MiB and more goes back" in line(tight)
    assert "memory goes back" in line(need + PARTIAL - 1)
    assert "about" in line(roomy) and budget.THP_ENV not in line(roomy)
    assert line(tight, h=10) == ""  # small images get no line
    monkeypatch.setattr(budget, "tune_malloc", lambda threshold=None: False)  # the allocator could not be tuned
    assert budget.THP_ENV in line(roomy)
    monkeypatch.setenv(budget.THP_ENV, "1")
    assert "about" in line(tight) and budget.THP_ENV not in line(tight)


def test_time_estimates_count_the_allocators_slowdown(monkeypatch, capsys, resident):
    """The announced time is the calibrated one times SLOWDOWN of the allocator's setting."""
    monkeypatch.setattr(budget, "tune_malloc", lambda threshold=None: True)
    side = 3000
    need = budget.job_need(Net(1), side, side)

    def minutes(max_memory):
        with budget.job_plan(Net(1), side, side, str(max_memory), "net", calibrate=lambda crop: 60.0 * crop):
            pass
        return float(capsys.readouterr().err.split(" and ")[1].split(" min")[0])

    tuned = minutes(int(need * budget.TUNE_HEADROOM) + 1)
    partial = minutes(int(need * budget.TUNE_HEADROOM) - 1)
    system = minutes(need + PARTIAL - 1)
    assert partial == pytest.approx(tuned * budget.SLOWDOWN["partial"], rel=0.01)
    assert system == pytest.approx(tuned * budget.SLOWDOWN["system"], rel=0.01)
    assert budget.SLOWDOWN["tuned"] == 1.0 < budget.SLOWDOWN["partial"] < budget.SLOWDOWN["system"]


def test_the_paper_models_name_their_partial_thresholds():
    """GLIC keeps freed blocks below 256 MiB under a tight budget, GABIC below 64 MiB (the README's memory sections);
    a model that names none is left as it is."""
    from gnn_lic.models import create_model

    assert create_model("glic", size="tiny").partial_mmap_threshold == PARTIAL
    assert create_model("gabic", size="tiny").partial_mmap_threshold == 64 << 20
    assert create_model("wacnn", size="tiny").partial_mmap_threshold is None
