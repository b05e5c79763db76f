"""Wavelet branch (GLIC ref. [38]): Haar DWT/IDWT, OLP orthogonality loss, WLS/iWLS."""

import math

import pytest
import torch
import torch.nn.functional as F

from gnn_lic.models.wavelet import OLP, WLS, HaarDWT, HaarIDWT, haar_dwt, haar_idwt, iWLS, ortho_loss


def _haar_kernels():
    s = 1 / math.sqrt(2)
    lo = torch.tensor([s, s], dtype=torch.float64)
    hi = torch.tensor([s, -s], dtype=torch.float64)  # reversed pywt dec_hi
    # kernel[h, w]: LL, LH (high-pass along the height), HL (along the width), HH
    return [torch.outer(lo, lo), torch.outer(hi, lo), torch.outer(lo, hi), torch.outer(hi, hi)]


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 1, 2, 2), (1, 5, 8, 2)])
def test_dwt_matches_depthwise_haar_conv_subband_major(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    C = shape[1]
    bands = [F.conv2d(x, k.expand(C, 1, 2, 2), stride=2, groups=C) for k in _haar_kernels()]
    torch.testing.assert_close(haar_dwt(x), torch.cat(bands, dim=1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 1, 2, 2), (3, 4, 10, 8)])
def test_idwt_is_exact_inverse_and_transform_is_orthonormal(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    y = haar_dwt(x)
    assert y.shape == (shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2)
    torch.testing.assert_close(haar_idwt(y), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(haar_dwt(haar_idwt(y)), y, atol=1e-12, rtol=0)
    torch.testing.assert_close(y.pow(2).sum(), x.pow(2).sum())  # Parseval
    torch.testing.assert_close(HaarIDWT()(HaarDWT()(x)), x, atol=1e-12, rtol=0)


def test_dwt_of_constant_is_lowpass_only():
    y = haar_dwt(torch.full((1, 2, 4, 4), 3.0))
    assert torch.all(y[:, :2] == 6.0) and torch.all(y[:, 2:] == 0)


def test_dwt_rejects_odd_sizes():
    with pytest.raises(ValueError):
        haar_dwt(torch.zeros(1, 1, 3, 4))
    with pytest.raises(ValueError):
        haar_idwt(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize("in_f,out_f", [(12, 5), (5, 12), (7, 7)])
def test_olp_loss_is_zero_for_orthogonal_weights(in_f, out_f):
    olp = OLP(in_f, out_f)
    q, _ = torch.linalg.qr(torch.randn(max(in_f, out_f), min(in_f, out_f)))
    with torch.no_grad():
        olp.linear.weight.copy_(q if out_f >= in_f else q.t())
    assert olp.loss().item() < 1e-12
    with torch.no_grad():
        olp.linear.weight.mul_(2.0)
    assert olp.loss().item() > 0.1


def test_ortho_loss_uses_the_smaller_gram_matrix():
    w = torch.randn(3, 8)  # out < in: G = W W^T (3 x 3)
    expected = F.mse_loss(w @ w.t(), torch.eye(3))
    torch.testing.assert_close(ortho_loss(w), expected)
    torch.testing.assert_close(ortho_loss(w.t()), expected)  # in < out: G = W^T W


def test_olp_is_pointwise_linear():
    olp = OLP(6, 4)
    x = torch.randn(2, 6, 3, 5)
    ref = olp.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(olp(x), ref)


def test_wls_iwls_shapes_and_scale_init():
    wls, iwls = WLS(3, 8), iWLS(8, 3)
    x = torch.randn(2, 3, 8, 12)
    y = wls(x)
    assert y.shape == (2, 8, 4, 6)
    assert iwls(y).shape == (2, 3, 8, 12)
    expected = torch.tensor([0.5] * 9 + [0.0] * 3)  # LL, LH, HL: 0.5, HH: 0
    assert torch.equal(wls.log_scale.detach(), expected)
    assert torch.equal(iwls.log_scale.detach(), expected)


def test_iwls_inverts_wls_with_orthogonal_projections():
    wls, iwls = WLS(2, 8), iWLS(8, 2)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(8, 8))
        wls.proj.linear.weight.copy_(q)
        iwls.proj.linear.weight.copy_(q.t())
        wls.proj.linear.bias.zero_()
        iwls.proj.linear.bias.zero_()
    x = torch.randn(1, 2, 6, 4)
    torch.testing.assert_close(iwls(wls(x)), x, atol=1e-5, rtol=0)
    assert wls.proj.loss().item() < 1e-10 and iwls.proj.loss().item() < 1e-10


def test_model_ortho_loss_sums_every_olp():
    from gnn_lic.models import create_model

    net = create_model("glic", size="tiny", wavelet=True)
    olps = [m for m in net.modules() if isinstance(m, OLP)]
    assert len(olps) == 8
    torch.testing.assert_close(net.ortho_loss(), sum(m.loss() for m in olps))
    assert create_model("glic", size="tiny", wavelet=False).ortho_loss().item() == 0.0


@pytest.mark.parametrize("in_ch, out_ch", [(3, 8), (5, 4)])
def test_wls_and_iwls_compute_their_defining_compositions(in_ch, out_ch):
    """WLS = P(e^s DWT(x)) and iWLS = IDWT(e^-s P x), computed as one convolution each: same values and
    gradients (every parameter) as the compositions written with haar_dwt / haar_idwt."""
    torch.manual_seed(in_ch)
    x = torch.randn(2, in_ch, 6, 10, dtype=torch.float64, requires_grad=True)
    down, up = WLS(in_ch, out_ch).double(), iWLS(in_ch, out_ch).double()
    with torch.no_grad():
        down.log_scale.normal_()
        up.log_scale.normal_()
    cases = [(down, lambda m: m.proj(haar_dwt(x) * m.log_scale.exp()[None, :, None, None])),
             (up, lambda m: haar_idwt(m.proj(x) * (-m.log_scale).exp()[None, :, None, None]))]
    for m, reference in cases:
        got, want = m(x), reference(m)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        params = [x, *m.parameters()]
        g1 = torch.autograd.grad((got * got.detach().sin()).sum(), params)
        g2 = torch.autograd.grad((want * want.detach().sin()).sum(), params)
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="even height and width"):
        down(torch.randn(1, in_ch, 5, 6, dtype=torch.float64))
