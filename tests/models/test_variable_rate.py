"""Gain units (Cui et al. 2021): levels, geometric interpolation, per-image qualities, the model contract."""

import math

import pytest
import torch

from gnn_lic.models import create_model
from gnn_lic.models.entropy import entropy_arithmetic
from gnn_lic.models.variable_rate import GainUnits, check_rate_lambdas

LAMBDAS = (0.0017, 0.0067, 0.025, 0.05)


def test_levels_and_start_values():
    g = GainUnits(3, LAMBDAS, reference=0.0067)
    assert g.levels == 4
    # the reference level starts at gain 1; the others at (lambda / reference) ** 0.5, inverse the reciprocal
    for s, lam in enumerate(LAMBDAS):
        want = math.sqrt(lam / 0.0067)
        assert torch.allclose(g.log_gain[s].exp(), torch.full((3,), want), rtol=1e-6)
        assert torch.allclose(g.log_inverse_gain[s].exp(), torch.full((3,), 1 / want), rtol=1e-6)


def test_interpolation_is_geometric_between_levels():
    torch.manual_seed(0)
    g = GainUnits(5, LAMBDAS)
    with torch.no_grad():
        g.log_gain.normal_()
    y = torch.ones(1, 5, 2, 2)
    for quality in (1.0, 1.25, 2.5, 3.0, 3.9, 4.0):
        s = min(int(math.floor(quality)) - 1, g.levels - 2)
        t = quality - 1 - s
        want = g.log_gain[s].exp() ** (1 - t) * g.log_gain[s + 1].exp() ** t  # Cui et al. eq. 8
        got = g.scale(y, quality)[0, :, 0, 0]
        assert torch.allclose(got, want, rtol=1e-5), quality
    lam = g.lmbda(torch.tensor([1.0, 1.5, 4.0]), 3)
    assert torch.allclose(lam, torch.tensor([0.0017, math.sqrt(0.0017 * 0.0067), 0.05]), rtol=1e-5)


def test_one_quality_per_image():
    torch.manual_seed(1)
    g = GainUnits(4, LAMBDAS)
    y = torch.randn(3, 4, 5, 5)
    q = torch.tensor([1.0, 2.7, 4.0])
    both = g.scale(y, q)
    for i in range(3):
        assert torch.equal(both[i:i + 1], g.scale(y[i:i + 1], float(q[i])))
    assert torch.allclose(g.unscale(g.scale(y, q), q), y, rtol=1e-5)  # inverse gains start as reciprocals


@pytest.mark.parametrize("quality", [0.5, 4.5, float("nan"), [1.0, 2.0]])
def test_bad_quality_is_refused(quality):
    g = GainUnits(2, LAMBDAS)
    with pytest.raises(ValueError, match="quality|qualities"):
        g.scale(torch.zeros(3, 2, 1, 1), quality)


@pytest.mark.parametrize("lambdas", [(0.01,), (0.02, 0.01), (0.01, 0.01), (0.0, 0.01), (0.01, float("inf"))])
def test_bad_lambdas_are_refused(lambdas):
    with pytest.raises(ValueError, match="lambdas"):
        check_rate_lambdas(lambdas)


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_variable_rate_model_contract(name):
    torch.manual_seed(0)
    net = create_model(name, size="tiny", rate_lambdas=LAMBDAS)
    single = create_model(name, size="tiny")
    assert net.qualities == 4 and single.qualities == 1
    assert sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in single.parameters()) == 2 * 4 * 32
    x = torch.rand(2, 3, 64, 64)
    out = net(x, quality=torch.tensor([1.0, 4.0]))
    assert out["x_hat"].shape == x.shape
    with pytest.raises(ValueError, match="one rate"):
        single(x, quality=2)
    net.update(force=True)
    net.eval()
    with torch.no_grad():
        rates = []
        for quality in (1, 4):  # a larger gain quantises more finely: more bits
            lik = net(x[:1], quality=quality)["likelihoods"]["y"]
            rates.append(float(-lik.log2().sum()))
        assert rates[0] < rates[1]
        with entropy_arithmetic(net, "fixed"):  # scheme fx16: the forward's means up to their last bits
            enc = net.compress(x[:1], quality=2.5)
            assert enc["shape"]["quality"] == 2.5
            dec = net.decompress(enc["strings"], enc["shape"])
        fwd = net(x[:1], quality=2.5)["x_hat"].clamp(0, 1)
    assert (dec["x_hat"] - fwd).abs().max() < 0.1  # the same rate point (fixed-point means: near-tie flips only)
