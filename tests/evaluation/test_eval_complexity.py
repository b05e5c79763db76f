import pytest
import torch
from torch import nn

from gnn_lic.evaluation.complexity import (
    count_flops,
    count_parameters,
    measure_latency,
    peak_memory,
    profile_model,
)


def _small_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(), nn.Linear(4 * 15 * 15, 10)
    )


def test_param_count():
    net = _small_net()
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    assert count_parameters(net) == (3 * 8 * 9 + 8) + (8 * 4 * 9 + 4) + (900 * 10 + 10)
    net[0].weight.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == count_parameters(net) - 3 * 8 * 9


def test_flops_linear_and_conv():
    fl = count_flops(nn.Linear(64, 32), (4, 64))
    assert fl["flops"] == 2 * 4 * 64 * 32
    assert fl["by_op"] == {"aten.addmm": 2 * 4 * 64 * 32}
    fl = count_flops(_small_net(), torch.rand(1, 3, 32, 32))
    conv1 = 2 * 8 * 3 * 9 * 32 * 32
    conv2 = 2 * 4 * 8 * 9 * 15 * 15
    lin = 2 * 900 * 10
    assert fl["flops"] == conv1 + conv2 + lin
    assert fl["by_op"]["aten.convolution"] == conv1 + conv2


def test_latency():
    calls = []
    lat = measure_latency(lambda x: calls.append(x.sum()), torch.ones(3), n_runs=4, warmup=2)
    assert len(calls) == 6
    assert len(lat["times_s"]) == 4 and lat["n_runs"] == 4
    assert 0 <= lat["min_s"] <= lat["median_s"] <= lat["max_s"]
    with pytest.raises(ValueError):
        measure_latency(lambda: None, n_runs=0)


def test_cpu_peak_memory_in_subprocess():
    # The output of the first conv alone is 16 x 512 x 512 float32 = 16 MiB.
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 3, 3, padding=1))
    mem = peak_memory(net, (1, 3, 512, 512))
    assert mem["device"] == "cpu"
    assert mem["peak_bytes"] >= 16 * 2**20
    assert mem["peak_bytes"] < 512 * 2**20
    assert mem["peak_total_bytes"] == mem["baseline_bytes"] + mem["peak_bytes"]


def test_profile_compressai_model():
    from compressai.models import FactorizedPrior

    torch.manual_seed(0)
    net = FactorizedPrior(N=8, M=8)
    prof = profile_model(net, (1, 3, 64, 64), n_runs=2, warmup=1, measure_memory=False)
    assert prof["params"] == sum(p.numel() for p in net.parameters())
    assert prof["params_M"] == pytest.approx(prof["params"] / 1e6)
    assert prof["flops"] > 0 and prof["flops_by_op"]["aten.convolution"] > 0
    assert prof["gflops"] == pytest.approx(prof["flops"] / 1e9)
    assert prof["encode_latency_s"] > 0 and prof["decode_latency_s"] > 0
    assert prof["forward_latency_s"] > 0
    assert "peak_memory_bytes" not in prof


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_memory_and_latency():
    net = nn.Conv2d(3, 16, 3, padding=1).cuda()
    mem = peak_memory(net, (1, 3, 512, 512))
    assert mem["device"].startswith("cuda") and mem["peak_bytes"] >= 16 * 2**20
    lat = measure_latency(net, torch.rand(1, 3, 512, 512, device="cuda"), n_runs=3, warmup=1)
    assert lat["median_s"] > 0
