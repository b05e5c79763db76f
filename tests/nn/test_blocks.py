"""Direct tests of the image-domain blocks of gnn_lic.nn.blocks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gnn_lic.graph import GlobalGrid, LocalWindow, TopK
from gnn_lic.nn import blocks, functional
from gnn_lic.nn.activations import GELU, gelu
from gnn_lic.nn.blocks import GFA_ORDERS, GatedFFN, GFABlock, GFALayer, GraphWindowBlock, LayerNorm2d, ResidualUnit


class Const(nn.Module):
    """Returns ``value`` everywhere, in the shape of its first input."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, *args):
        return torch.full_like(x, self.value)


def _x(b=2, c=8, h=6, w=10, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_layer_norm_2d_matches_a_per_pixel_layer_norm():
    ln = LayerNorm2d(8, eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(torch.linspace(0.5, 2, 8))
        ln.bias.copy_(torch.linspace(-1, 1, 8))
    x = _x()
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    want = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight[:, None, None] + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), want)


def test_gated_dw_feed_forward_shape_and_formula():
    ffn = GatedFFN(8, expansion=1.5, depthwise=True)
    x = _x()
    out = ffn(x)
    assert out.shape == x.shape and ffn.proj_in.out_channels == 2 * 12
    h = F.conv2d(F.conv2d(x, ffn.proj_in.weight), ffn.dwconv.weight, padding=1, groups=24)
    a, b = h[:, :12], h[:, 12:]
    torch.testing.assert_close(out, F.conv2d(F.gelu(a) * b, ffn.proj_out.weight))


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("depthwise", [False, True])
def test_gated_feed_forward_gradients_are_the_formulas(fmt, depthwise):
    """The gate's own backward (both halves written into one map) against autograd through the formula."""
    torch.manual_seed(1)
    ffn = GatedFFN(6, expansion=2, depthwise=depthwise).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.double).contiguous(memory_format=fmt).requires_grad_(True)
    g = torch.randn(2, 6, 5, 7, dtype=torch.double)
    ffn(x).backward(g)
    got = [x.grad.clone()] + [p.grad.clone() for p in ffn.parameters()]
    x.grad = None
    ffn.zero_grad()
    h = ffn.proj_in(x) if ffn.dwconv is None else ffn.dwconv(ffn.proj_in(x))
    a, b = h.chunk(2, dim=1)
    ffn.proj_out(F.gelu(a) * b).backward(g)
    for have, want in zip(got, [x.grad] + [p.grad for p in ffn.parameters()]):
        torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(blocks._GeluGate.apply, (torch.randn(1, 4, 3, 2, dtype=torch.double,
                                                                         requires_grad=True),))


def _graph(x):
    return blocks.build_graphs(x, {"g": LocalWindow(3)}, TopK(4))["g"]


def test_gfa_layer_is_two_residual_steps():
    layer = GFALayer(8, heads=2)
    x = _x()
    g = _graph(x)
    layer.conv, layer.ffn = Const(0.0), Const(0.0)
    torch.testing.assert_close(layer(x, g), x)  # both branches zero: identity
    layer.conv = Const(1.0)  # Agg adds 1, then the FFN branch (zero) adds nothing
    torch.testing.assert_close(layer(x, g), x + 1)
    layer.conv, layer.ffn = Const(0.0), GatedFFN(8, 2.0, depthwise=True)
    torch.testing.assert_close(layer(x, g), x + layer.ffn(layer.norm2(x)))


@pytest.mark.parametrize("order", GFA_ORDERS)
def test_gfa_block_layer_order_and_graphs_built_once(order, monkeypatch):
    block = GFABlock(8, depth=4, heads=2, local=LocalWindow(3), global_=GlobalGrid(2), selector=TopK(4), order=order)
    built, seen = [], []
    real = blocks.build_graphs

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        built.append(out)
        return out

    monkeypatch.setattr(blocks, "build_graphs", counting)
    for layer in block.layers:
        layer.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    block(_x(h=8, w=8))
    assert len(built) == 1  # one construction per forward, shared by every layer
    want = {"local-global": ["local", "global"] * 2, "global-local": ["global", "local"] * 2,
            "local": ["local"] * 4, "global": ["global"] * 4}[order]
    assert block.kinds == want
    assert [next(k for k, g in built[0].items() if g is s) for s in seen] == want
    assert set(built[0]) == set(want)


def test_gfa_block_rejects_an_unknown_order():
    with pytest.raises(ValueError, match="order"):
        GFABlock(8, depth=2, order="zigzag")


def test_graph_window_block_formula():
    block = GraphWindowBlock(8, window=4, knn=3, heads=2)
    x = _x(h=8, w=8)
    block.branch_a = Const(0.0)
    torch.testing.assert_close(block(x), x)  # a(x) = 0: the input passes
    block.branch_a, block.branch_b = Const(2.0), Const(0.0)
    torch.testing.assert_close(block(x), x + 1.0)  # 2 * sigmoid(0) + x
    block.branch_b = Const(50.0)
    torch.testing.assert_close(block(x), x + 2.0)  # the gate saturates at 1


def test_graph_window_block_without_autograd_is_bitwise_the_same(monkeypatch):
    """Without autograd, the autograd path's numbers bit for bit: with the compiled attention (where the loops
    are on, gnn_lic.nn.fused_attention, one forward pass for both) and with the batched path; the two
    attentions agree up to float rounding (other orders of the sums)."""
    torch.manual_seed(0)
    block = GraphWindowBlock(8, window=4, knn=3, heads=2)
    x = _x(h=8, w=12)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        results = []
        for fused in (True, False):
            with monkeypatch.context() as m:
                if not fused:
                    m.setattr(functional, "fused_attention_fits", lambda *a: False)
                want = block(inp)
                with torch.no_grad():
                    got = block(inp)
            assert torch.equal(got, want)
            results.append(got)
        torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)
        assert torch.equal(inp, x)  # the input is not overwritten


def test_gelu_on_either_layout_is_f_gelu():
    """gelu() takes the NHWC view of a channels-last map: F.gelu's values to the last bit, the layout kept;
    inplace overwrites its input."""
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(3)) * 8
    ref = torch.nn.functional.gelu(x)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        out = gelu(inp)
        torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
        assert out.stride() == inp.stride()
        inp = inp.clone()
        assert gelu(inp, inplace=True).data_ptr() == inp.data_ptr()
        torch.testing.assert_close(inp, ref, rtol=2e-6, atol=1e-6)
    assert isinstance(GELU(), torch.nn.GELU) and not GELU().state_dict()


def test_residual_unit_without_autograd_is_bitwise_the_same():
    torch.manual_seed(0)
    unit = ResidualUnit(8)
    x = torch.randn(2, 8, 6, 5) * 4
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        want = unit(inp)
        with torch.no_grad():
            got = unit(inp)
        assert torch.equal(got, want)
        torch.testing.assert_close(got, torch.nn.functional.gelu(x + unit.body(x)), rtol=1e-5, atol=1e-5)
