"""DepthwiseConv2d: nn.Conv2d's function and state dict, with a compiled weight gradient on a CPU."""

import pytest
import torch
from torch import nn

from gnn_lic import compiled
from gnn_lic.nn import DepthwiseConv2d
from gnn_lic.nn.convs import MAX_ACCUMULATORS, _DepthwiseConv, depthwise_weight_grad


def brute_weight_grad(x, g, k):
    """Sum over batch and pixels of x at each tap times g, with zeros outside the map (float64)."""
    B, C, H, W = x.shape
    p = k // 2
    xp = nn.functional.pad(x.double(), (p, p, p, p))
    out = torch.zeros(C, 1, k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(k):
            out[:, 0, i, j] = (xp[:, :, i:i + H, j:j + W] * g.double()).sum((0, 2, 3))
    return out


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("k, shape", [(5, (2, 6, 9, 7)), (3, (1, 16, 4, 11)), (5, (3, 8, 2, 3)), (1, (2, 4, 5, 5))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weight_grad_matches_the_sum(k, shape, dtype):
    g0 = torch.Generator().manual_seed(k)
    x = cl(torch.randn(shape, generator=g0, dtype=dtype))
    g = cl(torch.randn(shape, generator=g0, dtype=dtype))
    got = depthwise_weight_grad(x, g, k)
    assert got.dtype == dtype and got.shape == (shape[1], 1, k, k)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), brute_weight_grad(x, g, k), rtol=tol, atol=tol)
    # the same from an NCHW map (copied to channels-last inside)
    assert torch.equal(depthwise_weight_grad(x.contiguous(), g.contiguous(), k), got)


def test_weight_grad_does_not_follow_the_thread_count():
    x = cl(torch.randn(2, 32, 40, 24))
    g = cl(torch.randn(2, 32, 40, 24))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = depthwise_weight_grad(x, g, 5)
        torch.set_num_threads(2)
        two = depthwise_weight_grad(x, g, 5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_module_is_conv2d_with_the_compiled_backward(compiled_on):
    torch.manual_seed(0)
    m = DepthwiseConv2d(8, 5)
    ref = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    assert m.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(m.state_dict())
    x = cl(torch.randn(2, 8, 10, 12, dtype=torch.float64)).requires_grad_(True)
    m.double(), ref.double()
    assert m._compiled_backward(x)
    g = torch.randn(2, 8, 10, 12, dtype=torch.float64)
    y = m(x)
    assert torch.equal(y, ref(x))
    y.backward(g)
    got = [x.grad.clone(), m.weight.grad, m.bias.grad]
    x.grad = None
    ref(x).backward(g)
    for a, b in zip(got, [x.grad, ref.weight.grad, ref.bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(_DepthwiseConv.apply, (x.detach()[:1, :, :4, :5].requires_grad_(True),
                                                           m.weight.detach().clone().requires_grad_(True),
                                                           m.bias.detach().clone().requires_grad_(True)))


def test_falls_back_where_the_loop_does_not_apply(compiled_on):
    m = DepthwiseConv2d(8, 3, bias=False)
    x = cl(torch.randn(1, 8, 6, 6))
    assert m._compiled_backward(x)
    assert not m._compiled_backward(x.contiguous()[:, :, :, :5])  # not channels-last
    with torch.no_grad():
        assert not m._compiled_backward(x)
    previous = compiled.set_enabled(False)
    try:
        assert not m._compiled_backward(x)
    finally:
        compiled.set_enabled(previous)
    big = DepthwiseConv2d(MAX_ACCUMULATORS // 9 + 1, 3)
    assert not big._compiled_backward(cl(torch.randn(1, big.in_channels, 4, 4)))
    with pytest.raises(ValueError, match="odd"):
        DepthwiseConv2d(4, 4)


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_gradients_are_conv2d_gradients(bias, fmt):
    from gnn_lic.nn import PointwiseConv2d

    torch.manual_seed(2)
    m = PointwiseConv2d(6, 10, bias=bias).double()
    ref = nn.Conv2d(6, 10, 1, bias=bias).double()
    assert m.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    assert m._gemm_backward(x)
    g = torch.randn(2, 10, 5, 7, dtype=torch.float64)
    y = m(x)
    assert torch.equal(y, ref(x))
    y.backward(g)
    got = [x.grad.clone()] + [p.grad for p in m.parameters()]
    x.grad = None
    ref(x).backward(g)
    for a, b in zip(got, [x.grad] + [p.grad for p in ref.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    from gnn_lic.nn.convs import MAX_GEMM_PIXELS, _PointwiseConv
    assert torch.autograd.gradcheck(_PointwiseConv.apply, (x.detach()[:1, :, :2, :3].requires_grad_(True),
                                                           m.weight.detach().clone().requires_grad_(True),
                                                           None if m.bias is None else
                                                           m.bias.detach().clone().requires_grad_(True)))
    # larger maps and no autograd keep nn.Conv2d's own path
    assert not m._gemm_backward(cl(torch.randn(1, 6, MAX_GEMM_PIXELS + 1, 1, dtype=torch.float64)))
    with torch.no_grad():
        assert not m._gemm_backward(x)
