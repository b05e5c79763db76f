"""The fused depthwise convolution and GELU gate (gnn_lic.nn.gate) against the separate operations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gnn_lic import compiled
from gnn_lic.nn import blocks
from gnn_lic.nn.banded import banded_residual
from gnn_lic.nn.blocks import GatedFFN, LayerNorm2d
from gnn_lic.nn.gate import (ERF_TOLERANCE, DepthwiseGeluGate, GeluGate, depthwise_gelu_gate, erf, gate_fits, gate_pays,
                             gelu_gate, gelu_gate_grad)

needs_compiled = pytest.mark.skipif(not compiled.enabled(), reason="the fused gate is a compiled loop")


def _reference(h, weight):
    """GELU(a) * b of [a | b] = the depthwise convolution, in float64."""
    d = F.conv2d(h.double(), weight.double(), padding=1, groups=h.shape[1])
    a, b = d.chunk(2, dim=1)
    return F.gelu(a) * b


def _map(shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).contiguous(memory_format=torch.channels_last)


@needs_compiled
def test_erf_is_within_its_tolerance_everywhere():
    z = torch.linspace(-9, 9, 400_001)
    want = torch.tensor([math.erf(v) for v in z.double().tolist()], dtype=torch.float64)
    err = (erf(z).double() - want).abs().max().item()
    assert err <= ERF_TOLERANCE
    assert err > 1e-9  # an approximation, not the library's function: the check above measures something
    assert torch.equal(erf(-z), -erf(z))
    assert erf(torch.tensor([50.0, -50.0, 0.0])).tolist() == [1.0, -1.0, 0.0]


@needs_compiled
@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 1, 1), (1, 6, 1, 5), (1, 6, 4, 1), (3, 32, 5, 6)])
def test_fused_gate_is_the_separate_operations(shape):
    h = _map(shape)
    weight = torch.randn(shape[1], 1, 3, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert gate_pays(h, weight)
        out = depthwise_gelu_gate(h, weight)
    want = _reference(h, weight)
    assert out.shape == want.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), want, rtol=2e-6, atol=2e-6 * want.abs().max().item())
    # the taps' orientation matters (the check can fail): flipped weights give another map
    assert not torch.allclose(depthwise_gelu_gate(h, weight.flip(-1, -2)).double(), want, atol=1e-3) or shape[-1] == 1


@needs_compiled
@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 1, 1), (3, 30, 5, 6)])
def test_gate_without_convolution_is_the_formula(shape):
    h = _map(shape)
    with torch.no_grad():
        assert gate_pays(h)
        out = gelu_gate(h)
    a, b = h.double().chunk(2, dim=1)
    want = F.gelu(a) * b
    assert out.shape == want.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), want, rtol=2e-6, atol=2e-6 * want.abs().max().item())
    assert not torch.allclose(out.double(), F.gelu(b) * a, atol=1e-3)  # the halves' roles matter


@needs_compiled
def test_rows_and_threads_do_not_change_a_bit():
    """Each pixel goes through the same operations: a slab of rows with a row of halo gives the whole
    map's rows, and one thread the bits of two."""
    h = _map((2, 24, 11, 8))
    weight = torch.randn(24, 1, 3, 3)
    threads = torch.get_num_threads()
    with torch.no_grad():
        whole = depthwise_gelu_gate(h, weight)
        for r0, r1 in ((0, 3), (3, 4), (4, 11), (5, 9)):
            lo, hi = max(0, r0 - 1), min(11, r1 + 1)
            band = depthwise_gelu_gate(h[:, :, lo:hi].contiguous(memory_format=torch.channels_last), weight)
            assert torch.equal(band[:, :, r0 - lo:r1 - lo], whole[:, :, r0:r1])
        try:
            torch.set_num_threads(1)
            one = depthwise_gelu_gate(h, weight)
        finally:
            torch.set_num_threads(threads)
    assert torch.equal(one, whole)


@needs_compiled
@pytest.mark.parametrize("pixels", [1, 9, 40, 10_000])
def test_banded_feed_forward_on_channels_last_maps_is_the_whole_maps(pixels):
    """GatedFFN (depthwise) takes the fused pass on channels-last maps; bands with their halo, the same bits."""
    torch.manual_seed(0)
    ffn, norm = GatedFFN(16, 2.0, depthwise=True).eval(), LayerNorm2d(16)
    x = _map((2, 16, 11, 8), scale=1.0)
    with torch.no_grad():
        ref = x + ffn(norm(x))
        out = banded_residual(x.clone(), lambda t: ffn(norm(t)), halo=1, pixels=pixels, inplace=True)
    assert torch.equal(out, ref)


def test_the_fused_pass_applies_only_where_it_may():
    h, weight = _map((1, 8, 4, 4)), torch.randn(8, 1, 3, 3)
    with torch.no_grad():
        assert gate_pays(h, weight) == compiled.enabled()
        assert not gate_pays(h.contiguous(), weight)  # NCHW
        assert not gate_pays(h.double(), weight.double())
        assert not gate_pays(h, torch.randn(8, 1, 5, 5))
        assert gate_pays(h) == compiled.enabled() and not gate_pays(h.contiguous())
        assert not gate_pays(h[:, :7], weight[:7])  # an odd number of channels has no halves
        previous = compiled.set_enabled(False)
        try:
            assert not gate_pays(h, weight)
        finally:
            compiled.set_enabled(previous)
    assert not gate_pays(h, weight)  # autograd on


def test_feed_forward_without_the_fused_pass_is_the_formula():
    """With the compiled loops off the no-autograd forward is the separate operations, channels-last or not."""
    torch.manual_seed(0)
    ffn = GatedFFN(8, 2.0, depthwise=True)
    x = _map((1, 8, 6, 5), scale=1.0)
    previous = compiled.set_enabled(False)
    try:
        with torch.no_grad():
            out = ffn(x)
    finally:
        compiled.set_enabled(previous)
    a, b = ffn.dwconv(ffn.proj_in(x)).chunk(2, 1)
    torch.testing.assert_close(out, ffn.proj_out(F.gelu(a) * b), rtol=1e-6, atol=1e-6)
    assert np.isfinite(out.numpy()).all()


@needs_compiled
@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 1, 1), (1, 6, 4, 1)])
def test_fused_gate_under_autograd_gives_the_separate_operations_gradients(shape):
    """DepthwiseGeluGate (training): the output and the gradients of h and the weights are those of
    autograd through the depthwise convolution and the gate, up to float rounding."""
    h = _map(shape, seed=3).requires_grad_(True)
    weight = torch.randn(shape[1], 1, 3, 3, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    g = torch.randn(shape[0], shape[1] // 2, *shape[2:], generator=torch.Generator().manual_seed(5))
    assert gate_fits(h, weight) and not gate_pays(h, weight)  # autograd on
    out = DepthwiseGeluGate.apply(h, weight)
    out.backward(g)
    got = out.detach(), h.grad.clone(), weight.grad.clone()
    h.grad = weight.grad = None
    a, b = F.conv2d(h, weight, padding=1, groups=shape[1]).chunk(2, dim=1)
    (F.gelu(a) * b).backward(g)
    for have, want in zip(got, ((F.gelu(a) * b).detach(), h.grad, weight.grad)):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


def _reference_grad(h, grad, weight):
    """The gradient of GELU(a) * b with respect to [a | b] = D(h) (or h), by autograd in float64."""
    d = h.double() if weight is None else F.conv2d(h.double(), weight.double(), padding=1, groups=h.shape[1])
    d = d.detach().requires_grad_(True)
    a, b = d.chunk(2, dim=1)
    (F.gelu(a) * b).backward(grad.double())
    return d.grad


@needs_compiled
@pytest.mark.parametrize("depthwise", [True, False])
@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 1, 1), (1, 6, 4, 1), (3, 30, 5, 6)])
def test_gate_gradient_is_the_formula(shape, depthwise):
    """gelu_gate_grad: both halves' gradients in one pass, GELU'(a) = Phi(a) + a phi(a) from the rational erf
    and the table-free density, against float64 autograd; inputs up to |a| ~ 10 cover the density's range."""
    h = _map(shape, seed=6, scale=3.0)
    weight = torch.randn(shape[1], 1, 3, 3, generator=torch.Generator().manual_seed(7)) if depthwise else None
    grad = torch.randn(shape[0], shape[1] // 2, *shape[2:], generator=torch.Generator().manual_seed(8))
    have = gelu_gate_grad(h, grad, weight)
    want = _reference_grad(h, grad, weight)
    assert have.shape == want.shape and have.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(have.double(), want, rtol=2e-6, atol=2e-6 * want.abs().max().item())
    # the check can fail: without the density term the first half is another map
    a = (h.double() if weight is None else F.conv2d(h.double(), weight.double(), padding=1, groups=shape[1]))
    a, b = a.chunk(2, dim=1)
    no_density = grad.double() * b * 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    half = shape[1] // 2
    assert not torch.allclose(have[:, :half].double(), no_density, atol=1e-3)


@needs_compiled
def test_gate_gradient_far_out_is_the_limits():
    """Far from zero GELU'(a) is 0 (a << 0) or 1 (a >> 0): the clamped density neither overflows nor leaves a
    trace; the second half is g GELU(a)."""
    a = torch.tensor([-1e4, -40.0, -13.5, -6.0, 0.0, 6.0, 13.5, 40.0, 1e4])
    h = torch.cat([a, torch.full_like(a, 3.0)]).view(1, 18, 1, 1).contiguous(memory_format=torch.channels_last)
    grad = torch.full((1, 9, 1, 1), 2.0)
    out = gelu_gate_grad(h, grad).view(18)
    assert torch.isfinite(out).all()
    assert out[:3].abs().max().item() < 1e-30 and out[6:9].tolist() == [6.0, 6.0, 6.0]
    # absolute: Phi(a) from the rational erf, within ERF_TOLERANCE of the exact one (0 below a = -4 sqrt 2)
    torch.testing.assert_close(out.double(), _reference_grad(h, grad, None).view(18), rtol=1e-6, atol=1e-6)


@needs_compiled
@pytest.mark.parametrize("shape", [(2, 16, 7, 9), (1, 8, 1, 1)])
def test_gate_without_convolution_under_autograd_gives_the_formulas_gradients(shape):
    """GeluGate (training): the output and the gradient of h are those of autograd through GELU(a) * b."""
    h = _map(shape, seed=9).requires_grad_(True)
    g = torch.randn(shape[0], shape[1] // 2, *shape[2:], generator=torch.Generator().manual_seed(10))
    out = GeluGate.apply(h)
    out.backward(g)
    got = out.detach(), h.grad.clone()
    h.grad = None
    a, b = h.chunk(2, dim=1)
    want = F.gelu(a) * b
    want.backward(g)
    for have, ref in zip(got, (want.detach(), h.grad)):
        torch.testing.assert_close(have, ref, rtol=1e-5, atol=1e-5 * max(1.0, ref.abs().max().item()))


@needs_compiled
@pytest.mark.parametrize("depthwise", [True, False])
def test_feed_forward_trains_through_the_fused_gate_on_channels_last_maps(monkeypatch, depthwise):
    """GatedFFN under autograd on a channels-last map takes DepthwiseGeluGate (with the depthwise convolution) or
    GeluGate (without): parameter gradients as the NCHW map's (the separate operations), up to float rounding."""
    torch.manual_seed(0)
    ffn = GatedFFN(8, 2.0, depthwise=depthwise)
    x = torch.randn(2, 8, 6, 5)
    calls = []
    name, fused = ("DepthwiseGeluGate", DepthwiseGeluGate) if depthwise else ("GeluGate", GeluGate)

    class Counted(fused):
        @staticmethod
        def forward(ctx, *args):
            calls.append(args[0].shape)
            return fused.forward(ctx, *args)

    monkeypatch.setattr(blocks, name, Counted)
    grads = []
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        ffn.zero_grad()
        ffn(inp).square().sum().backward()
        grads.append([p.grad.clone() for p in ffn.parameters()])
    assert len(calls) == 1  # the channels-last map only
    for have, want in zip(*grads):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))
