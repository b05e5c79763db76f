"""RateDistortionLoss against hand computations."""

import pytest
import torch
from pytorch_msssim import ms_ssim
from torch import nn

from gnn_lic.training import RateDistortionLoss, bpp_from_likelihoods
from gnn_lic.training import losses
from gnn_lic.training.losses import has_ortho_loss, ms_ssim_train


def _output(n=2, h=16, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, h, w, generator=g)
    x_hat = (target + 0.05 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    lik = {"y": torch.rand(n, 8, h // 4, w // 4, generator=g) * 0.9 + 0.05,
           "z": torch.rand(n, 4, h // 8, w // 8, generator=g) * 0.9 + 0.05}
    return {"x_hat": x_hat, "likelihoods": lik}, target


class _WaveletNet(nn.Module):
    def __init__(self, wavelet):
        super().__init__()
        self.wavelet = wavelet
        self.w = nn.Parameter(torch.tensor(2.0))

    def ortho_loss(self):
        return self.w * 1.5


def test_mse_terms_by_hand():
    out, target = _output()
    n, _, h, w = target.shape
    terms = RateDistortionLoss(lmbda=0.013, metric="mse")(out, target)
    bits = sum(float((-torch.log2(v)).sum()) for v in out["likelihoods"].values())
    bpp = bits / (n * h * w)
    mse = float(((out["x_hat"] - target) ** 2).mean())
    assert set(terms) == {"bpp_loss", "mse_loss", "loss"}
    assert float(terms["bpp_loss"]) == pytest.approx(bpp, rel=1e-5)
    assert float(terms["mse_loss"]) == pytest.approx(mse, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(bpp + 0.013 * 255**2 * mse, rel=1e-5)


def test_ms_ssim_terms_by_hand():
    out, target = _output(n=1, h=176, w=192)
    terms = RateDistortionLoss(lmbda=8.0, metric="ms-ssim")(out, target)
    value = float(ms_ssim(out["x_hat"], target, data_range=1.0))
    assert "mse_loss" not in terms
    assert float(terms["ms_ssim_loss"]) == pytest.approx(value, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(terms["bpp_loss"]) + 8.0 * (1 - value), rel=1e-5)


def test_ms_ssim_small_crops_use_a_smaller_window():
    out, target = _output(n=1, h=128, w=128)
    losses._WARNED_SIDES.discard(128)
    with pytest.warns(UserWarning, match="7-tap window"):
        value = ms_ssim_train(out["x_hat"], target)
    assert float(value) == pytest.approx(float(ms_ssim(out["x_hat"], target, data_range=1.0, win_size=7)), rel=1e-6)
    with pytest.raises(ValueError, match="at least 33"):
        ms_ssim_train(target[..., :32, :32], target[..., :32, :32])


def test_ortho_term_only_with_the_wavelet_branch():
    out, target = _output()
    crit = RateDistortionLoss(lmbda=0.01, ortho_weight=0.1)
    plain = crit(out, target)
    on = crit(out, target, _WaveletNet(True))
    off = crit(out, target, _WaveletNet(False))
    assert float(on["ortho_loss"].detach()) == pytest.approx(3.0)
    assert float(on["loss"].detach()) == pytest.approx(float(plain["loss"]) + 0.3, rel=1e-6)
    assert "ortho_loss" not in off and float(off["loss"]) == float(plain["loss"])
    assert has_ortho_loss(_WaveletNet(True)) and not has_ortho_loss(nn.Linear(2, 2)) and not has_ortho_loss(None)


def test_loss_is_differentiable_and_likelihood_containers():
    out, target = _output()
    out["x_hat"].requires_grad_(True)
    terms = RateDistortionLoss(0.01)(out, target)
    terms["loss"].backward()
    assert out["x_hat"].grad is not None and torch.isfinite(out["x_hat"].grad).all()
    lik = out["likelihoods"]
    as_list = bpp_from_likelihoods([lik["y"], [lik["z"]]], 100)
    as_dict = bpp_from_likelihoods(lik, 100)
    assert float(as_list) == pytest.approx(float(as_dict))
    assert float(bpp_from_likelihoods(torch.full((1, 1, 2, 2), 0.5), 4)) == pytest.approx(1.0)


def test_bad_metric_and_repr():
    with pytest.raises(ValueError, match="metric"):
        RateDistortionLoss(0.01, metric="psnr")
    assert "lmbda=0.01" in repr(RateDistortionLoss(0.01))
