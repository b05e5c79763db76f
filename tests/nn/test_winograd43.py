"""Winograd F(4x4, 3x3) for 5x5 stride-2 (transposed) convolutions and sub-pixel convolutions: the same
function as the direct layers up to float rounding, and the direct layers wherever the path does not apply."""

import pytest
import torch
import torch.nn.functional as F
from compressai.layers import subpel_conv3x3
from compressai.models.utils import conv, deconv
from torch import nn

from gnn_lic import compiled
from gnn_lic.models.layers import Stride2Conv2d, Stride2ConvTranspose2d, SubpelConv3x3, SubpixelConvTranspose2d
from gnn_lic.nn import winograd43, winograd43_train
from gnn_lic.nn.banded import banded_stage
from gnn_lic.nn.winograd43 import filter_tiles43, polyphase_weight, winograd43 as run43

needs_compiled = pytest.mark.skipif(not compiled.enabled(), reason="the Winograd path is a compiled loop")
SHAPES = [(1, 7, 9), (2, 5, 4), (1, 1, 1), (1, 13, 4), (1, 8, 8), (2, 2, 11)]


def _close(got, ref):
    """float32 transforms against the float64 direct sum: within tens of ulps (factors up to 8) of the outputs' scale."""
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert (got.double() - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


def _pair(make, reference, in_ch, out_ch, seed):
    """A layer and the CompressAI layer with the same parameters (random bias)."""
    torch.manual_seed(seed)
    layer = make(in_ch, out_ch)
    with torch.no_grad():
        layer[0].bias.normal_() if isinstance(layer, nn.Sequential) else layer.bias.normal_()
    ref = reference(in_ch, out_ch)
    ref.load_state_dict(layer.state_dict())
    return layer, ref


def test_polyphase_weight_is_the_strided_convolution():
    """Brute force: the valid 3x3 convolution over the polyphase components (channels (a, b, c)) with
    :func:`polyphase_weight` is the 5x5 stride-2 convolution with padding 2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, w, stride=2, padding=2)
    Ho, Wo = ref.shape[-2:]
    xp = F.pad(x, (2, 2 * (Wo + 2) - 6 - 2, 2, 2 * (Ho + 2) - 9 - 2))
    phases = torch.cat([xp[:, :, a::2, b::2] for a in range(2) for b in range(2)], dim=1)
    assert torch.allclose(F.conv2d(phases, polyphase_weight(w)), ref, atol=1e-12)


def test_filter_tiles43_is_g_w_gt():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    G = winograd43._G
    tiles = filter_tiles43(w)
    assert tiles.shape == (36, 2, 3)
    for o in range(3):
        for c in range(2):
            assert torch.allclose(tiles[:, c, o].reshape(6, 6), G @ w[o, c] @ G.t())


#: (layer, CompressAI's layer, in and out channels)
LAYERS = {
    "conv": (Stride2Conv2d, lambda a, b: conv(a, b, 5, 2), 32, 40),
    "deconv": (Stride2ConvTranspose2d, lambda a, b: deconv(a, b, 5, 2), 40, 32),
    "subpel": (SubpelConv3x3, lambda a, b: subpel_conv3x3(a, b, 2), 32, 12),
}


@needs_compiled
@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("shape", SHAPES)
def test_layers_compute_compressais_function(kind, shape):
    """The strided convolution, the transposed one and the sub-pixel convolution: CompressAI's layers in float64
    up to float32 rounding, odd sizes and batches included."""
    make, reference, in_ch, out_ch = LAYERS[kind]
    layer, ref = _pair(make, reference, in_ch, out_ch, sum(shape))
    x = torch.randn(shape[0], in_ch, *shape[1:])
    with torch.no_grad():
        _close(layer(x), ref.double()(x.double()))


@needs_compiled
@pytest.mark.parametrize("polyphase, shuffle", [(True, False), (False, True), (False, False)])
def test_rows_in_bands_are_the_whole_maps_bit_for_bit(polyphase, shuffle, monkeypatch):
    """Inside :func:`~gnn_lic.nn.banded.banded_stage` each image's rows of tiles are multiplied in groups from its
    first: bands that start on their grid (TILE_ROWS rows of the 3x3 convolution's output) and any chunking give
    the whole map's bits."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 64, 10, generator=g)
    w = torch.randn(16, 32 if polyphase else 8, 3, 3, generator=g)
    tiles, bias = filter_tiles43(w), torch.randn(16, generator=g)
    T = winograd43.TILE_ROWS
    geometry = dict(down=2, align=2 * T, halo=2 * T) if polyphase else dict(up=2 if shuffle else 1, align=T, halo=T)

    def fn(t):
        return run43(t, tiles, bias, polyphase, shuffle)

    whole = banded_stage([x], fn, max_rows=64, **geometry)  # one band: the whole map
    assert (whole - fn(x)).abs().max() <= 1e-5 * whole.abs().max()  # outside a band: a product per chunk
    for max_rows in (geometry["align"], 2 * geometry["align"], 3 * geometry["align"]):
        assert torch.equal(banded_stage([x], fn, max_rows=max_rows, **geometry), whole), max_rows
    monkeypatch.setattr(winograd43, "CHUNK_BYTES", 1)  # one product per chunk
    assert torch.equal(banded_stage([x], fn, max_rows=2 * geometry["align"], **geometry), whole)
    # bands off the tile grid (half a tile) compute their rows from other tiles: other rounding
    off_grid = dict(geometry, align=4 if polyphase else 2, halo=4 if polyphase else 2)
    assert not torch.equal(banded_stage([x], fn, max_rows=10 if polyphase else 6, **off_grid), whole)


@pytest.mark.parametrize("batch, th, rows", [(1, 7, 100), (2, 5, 3), (3, 4, 1), (2, 6, 4)])
def test_chunks_hold_whole_groups_of_each_images_rows(batch, th, rows):
    """Inside a band each image's rows of tiles are multiplied in groups of TILES_PER_PRODUCT from its first, chunks
    hold whole groups (at most ``rows`` rows unless one group is larger), and every row is in one product."""
    g = winograd43.TILES_PER_PRODUCT
    seen = []
    for r0, n, products in winograd43._chunks(batch, th, rows, True):
        assert n <= max(rows, g) and products[0][0] == 0 and products[-1][1] == n
        for a, c in products:
            b, i = divmod(r0 + a, th)
            assert i % g == 0 and c - a == min(g, th - i)  # a group starts on the image's grid
            seen += range(r0 + a, r0 + c)
    assert seen == list(range(batch * th))
    plain = winograd43._chunks(batch, th, rows, False)
    assert [(r0, n) for r0, n, _ in plain] == [(r0, min(rows, batch * th - r0)) for r0 in range(0, batch * th, rows)]
    assert all(products == [(0, n)] for _, n, products in plain)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_direct_layer_wherever_the_path_does_not_apply(kind, monkeypatch):
    """Same state dict as CompressAI's layer; under autograd on maps below TRAIN_MIN_PIXELS, with the compiled
    loops off, and with too few channels the forward is the direct layer's, bit for bit (training gradients
    included)."""
    make, reference = LAYERS[kind][:2]
    layer, ref = _pair(make, reference, 32, 32, 3)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(1, 32, 6, 7, requires_grad=True)
    got, want = layer(x), ref(x)
    assert torch.equal(got, want)
    assert torch.equal(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0])
    with torch.no_grad():
        previous = compiled.set_enabled(False)
        try:
            assert torch.equal(layer(x), ref(x))
        finally:
            compiled.set_enabled(previous)
        monkeypatch.setattr(winograd43, "MIN_CHANNELS", 33)
        assert torch.equal(layer(x), ref(x))


def test_transposed_phase_weight_is_the_subpixel_layers():
    """The 5x5 stride-2 phase weights are :meth:`SubpixelConvTranspose2d.phase_weight`'s (any kernel and stride)."""
    torch.manual_seed(4)
    layer = SubpixelConvTranspose2d(6, 5, kernel_size=5, stride=2)
    assert torch.equal(winograd43.transposed_phase_weight(layer.weight), layer.phase_weight())


@needs_compiled
@pytest.mark.parametrize("kind", ["conv", "deconv"])
@pytest.mark.parametrize("shape", [(2, 10, 12), (1, 9, 7)])
@pytest.mark.parametrize("input_grad", [True, False])
def test_training_path_gives_the_layers_gradients(kind, shape, input_grad, monkeypatch):
    """Under autograd on large enough maps (TRAIN_MIN_PIXELS lowered here) the layers take the Winograd
    autograd functions: the output and the input, weight and bias gradients are CompressAI's layer's in
    float64 up to float32 rounding, odd sizes included (the input gradient cut to the input's size)."""
    monkeypatch.setattr(winograd43_train, "TRAIN_MIN_PIXELS", 1)
    make, reference, in_ch, out_ch = LAYERS[kind]
    layer, ref = _pair(make, reference, in_ch, out_ch, sum(shape))
    ref = ref.double()
    x = torch.randn(shape[0], in_ch, *shape[1:])
    x64 = x.double().requires_grad_(input_grad)
    x.requires_grad_(input_grad)
    y, y64 = layer(x), ref(x64)
    assert type(y.grad_fn).__name__.startswith("_Stride2Conv")
    g = torch.randn(y64.shape, dtype=torch.float64)
    y.backward(g.float())
    y64.backward(g)
    _close(y.detach(), y64.detach())
    _close(layer.weight.grad, ref.weight.grad)
    _close(layer.bias.grad, ref.bias.grad)
    if input_grad:
        _close(x.grad, x64.grad)
    else:
        assert x.grad is None


@needs_compiled
@pytest.mark.parametrize("polyphase", [True, False])
def test_weight_grad43_is_the_direct_weight_gradient_in_any_chunks(polyphase, monkeypatch):
    """The 3x3 weights' gradient from the transformed tiles is the direct convolution's (float64), odd map sizes
    and a batch of 2 included, whether the tiles are summed in one product or one row of tiles at a time."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, 13, 10, generator=g)
    w = torch.randn(7, 6, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    if polyphase:  # the valid 3x3 convolution over the polyphase components is the 5x5 stride-2 one
        w5 = torch.randn(7, 6, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
        y = F.conv2d(x.double(), w5, stride=2, padding=2)
    else:
        y = F.conv2d(x.double(), w, padding=1)
    grad = torch.randn(y.shape, dtype=torch.float64, generator=g)
    if polyphase:
        ref5 = torch.autograd.grad(y, w5, grad)[0]
        got5 = winograd43_train._kernel_grad(polyphase_weight, w5.detach().float(),
                                             winograd43_train.weight_grad43(x, grad.float(), polyphase=True))
        _close(got5, ref5)
        return
    ref = torch.autograd.grad(y, w, grad)[0]
    _close(winograd43_train.weight_grad43(x, grad.float(), polyphase=False), ref)
    monkeypatch.setattr(winograd43, "CHUNK_BYTES", 1)
    _close(winograd43_train.weight_grad43(x, grad.float(), polyphase=False), ref)


@needs_compiled
@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_training_path_from_train_min_pixels(kind):
    """The 3x3 map (a strided convolution's output, a transposed one's input) of TRAIN_MIN_PIXELS positions takes
    the Winograd autograd function; one row fewer, the direct layer."""
    make, _, in_ch, out_ch = LAYERS[kind]
    layer = make(in_ch, out_ch)
    side = int(winograd43_train.TRAIN_MIN_PIXELS**0.5)
    rows = 2 * side if kind == "conv" else side
    for h, path in ((rows, "_Stride2Conv"), (rows - (2 if kind == "conv" else 1), "Convolution")):
        y = layer(torch.randn(1, in_ch, h, rows, requires_grad=True))
        assert type(y.grad_fn).__name__.startswith(path), (h, type(y.grad_fn).__name__)


@needs_compiled
def test_winograd_conv2d_takes_f43_on_channels_last_maps(monkeypatch):
    """:class:`~gnn_lic.nn.winograd.WinogradConv2d` (the 3x3 convolution of the residual units): F(4x4, 3x3) on
    channels-last maps without autograd, the direct convolution's values up to rounding."""
    from gnn_lic.nn.winograd import WinogradConv2d

    torch.manual_seed(4)
    layer = WinogradConv2d(32, 32)
    calls = []
    monkeypatch.setattr("gnn_lic.nn.winograd.winograd43", lambda *a, **k: calls.append(1) or run43(*a, **k))
    x = torch.randn(2, 32, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _close(layer(x), layer.double()(x.double()))
        layer.float()
        assert calls == [1]
        layer(x.contiguous())  # a contiguous map of 12 output tiles: not this path
        assert calls == [1]
        big = torch.randn(1, 32, 33, 37)  # contiguous, 9 x 10 tiles: this path, converted to channels-last
        monkeypatch.setattr("gnn_lic.nn.winograd.MIN_TILES43", 91)
        layer(big)
        assert calls == [1]
        monkeypatch.setattr("gnn_lic.nn.winograd.MIN_TILES43", 90)
        got = layer(big)
        assert calls == [1, 1] and got.is_contiguous(memory_format=torch.channels_last)
        _close(got, layer.double()(big.double()))
