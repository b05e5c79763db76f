"""CNN layers and latent codecs of the models (GLIC Fig. 2(c), SCCTX; GABIC eq. 3)."""

import pytest
import torch
from compressai.latent_codecs import CheckerboardLatentCodec

from gnn_lic.models.channel_slice import ChannelSliceLatentCodec
from gnn_lic.models.scctx import (CheckerboardContextConv2d, HalfMapCheckerboardLatentCodec, elic_groups,
                                  scctx_latent_codec)
from gnn_lic.models.layers import (DepthwiseConvBlock, GatedTransformCNN, ParameterAggregationBlock, SubpixelConvTranspose2d,
                                   channel_ramp, ramp_widths)
from gnn_lic.nn.blocks import GatedFFN


def test_ramp_widths_match_glic_entropy_model():
    groups = [16, 16, 32, 64, 192]
    ctx = [ramp_widths(sum(groups[:k]), 2 * groups[k], 3, min_ch=192) for k in range(1, 5)]
    assert ctx == [[16, 192, 192, 32], [32, 192, 192, 64], [64, 192, 192, 128], [128, 213, 298, 384]]
    par = [ramp_widths(2 * g + (2 * g if k else 0) + 384, 2 * g, 3, min_ch=384) for k, g in enumerate(groups)]
    assert par == [
        [416, 384, 384, 32],
        [448, 384, 384, 32],
        [512, 384, 384, 64],
        [640, 469, 384, 128],
        [1152, 896, 640, 384],
    ]


def test_channel_ramp_builds_layers():
    seq = channel_ramp(8, 4, min_ch=16, make_layer=GatedTransformCNN)
    assert len(seq) == 3
    assert seq(torch.randn(1, 8, 5, 5)).shape == (1, 4, 5, 5)


def test_elic_groups():
    assert elic_groups(320) == [16, 16, 32, 64, 192]
    assert sum(elic_groups(96)) == 96 and len(elic_groups(96)) == 5
    with pytest.raises(ValueError):
        elic_groups(3, 5)


def test_checkerboard_context_is_compressais_masked_conv_in_place():
    """Same output, gradient and masked weight as CompressAI's layer, in the same storage on every call."""
    from compressai.layers import CheckerboardMaskedConv2d  # noqa: PLC0415

    torch.manual_seed(0)
    ours, theirs = CheckerboardContextConv2d(4, 6, 5, padding=2), CheckerboardMaskedConv2d(4, 6, 5, padding=2)
    theirs.load_state_dict(ours.state_dict())  # unmasked weights: both must mask them
    x = torch.randn(2, 4, 8, 9)
    storage = ours.weight.data_ptr()
    a, b = ours(x), theirs(x)
    a.square().sum().backward()
    b.square().sum().backward()
    assert torch.equal(a, b) and torch.equal(ours.weight, theirs.weight) and torch.equal(ours.weight.grad, theirs.weight.grad)
    assert ours.weight.data_ptr() == storage and ours.weight.eq(0).sum() == ours.mask.eq(0).sum()


def test_conv_blocks_shapes():
    x = torch.randn(2, 8, 7, 5)
    assert GatedTransformCNN(8)(x).shape == x.shape
    assert GatedTransformCNN(8, 16, expansion=2)(x).shape == (2, 16, 7, 5)
    assert DepthwiseConvBlock(8, 4)(x).shape == (2, 4, 7, 5)
    assert GatedFFN(8, 2)(x).shape == x.shape


def test_parameter_aggregation_is_pointwise():
    """The checkerboard codec needs pointwise entropy parameters."""
    torch.manual_seed(0)
    block = ParameterAggregationBlock(6, 4)
    x = torch.randn(1, 6, 5, 5)
    y = block(x)
    x2 = x.clone()
    x2[..., 2, 3] += 1.0
    diff = (block(x2) - y).abs().sum(1)[0]
    assert diff[2, 3] > 0
    diff[2, 3] = 0
    assert torch.all(diff == 0)


def _small_scctx():
    """A 32-channel SCCTX codec (groups 2, 2, 4, 8, 16) with narrow networks."""
    return scctx_latent_codec(M=32, groups=[2, 2, 4, 8, 16], hyper_channels=16, side_channels=32, hyper_depth=1,
                              ctx_min_channels=16, param_min_channels=32)


def test_scctx_latent_codec_structure():
    lc = _small_scctx()
    y = torch.randn(1, 32, 4, 8)  # the models pad y to a multiple of 4
    out = lc(y)
    assert out["y_hat"].shape == y.shape and out["likelihoods"]["y"].shape == y.shape
    assert out["likelihoods"]["z"].shape == (1, 16, 1, 2)
    with pytest.raises(ValueError):
        scctx_latent_codec(M=32, groups=[2, 2, 4, 8])


def _twopass_both_ways(lc, y, side):
    """(ours, CompressAI's) forward of ``lc``: y_hat, likelihoods and the gradients of a loss on both."""
    runs = []
    for forward in (lc._forward_twopass, lambda *a: CheckerboardLatentCodec._forward_twopass(lc, *a)):
        lc.zero_grad()
        yy, ss = y.clone().requires_grad_(), side.clone().requires_grad_()
        torch.manual_seed(1)  # the same training noise of the likelihoods
        out = forward(yy, ss)
        (out["y_hat"].square().sum() - out["likelihoods"]["y"].log().sum()).backward()
        grads = [yy.grad, ss.grad] + [p.grad.clone() for p in lc.parameters() if p.grad is not None]
        runs.append([out["y_hat"], out["likelihoods"]["y"], *grads])
    return runs


@pytest.mark.parametrize("parity", ["even", "odd"])
@pytest.mark.parametrize("shape", [(4, 8), (5, 6), (1, 2)])
def test_half_map_checkerboard_is_compressais_twopass(parity, shape):
    """The parameter network on each pass's half of the positions gives CompressAI's two-pass forward and
    gradients (float64: equal up to the rounding of products over another map shape)."""
    torch.manual_seed(0)
    lc = _small_scctx().double()
    cb = lc.latent_codec["y"].latent_codec["y3"]
    assert isinstance(cb, HalfMapCheckerboardLatentCodec) and cb._pointwise()
    cb.anchor_parity, cb.non_anchor_parity = parity, {"even": "odd", "odd": "even"}[parity]
    H, W = shape
    y = 3 * torch.randn(2, 8, H, W, dtype=torch.float64)
    side = torch.randn(2, 2 * 8 + 32, H, W, dtype=torch.float64)  # channel context (2 g) and side parameters
    ours, theirs = _twopass_both_ways(cb, y, side)
    assert len(ours) == len(theirs) > 4
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_half_map_checkerboard_falls_back_to_the_whole_map():
    """An odd width, or a parameter network with a spatial kernel, takes CompressAI's forward."""
    torch.manual_seed(0)
    lc = _small_scctx()
    cb = lc.latent_codec["y"].latent_codec["y0"]
    calls = []
    cb.entropy_parameters.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    cb(torch.randn(1, 2, 4, 5), torch.randn(1, 32, 4, 5))
    assert calls == [(1, 36, 4, 5)] * 2
    calls.clear()
    cb(torch.randn(1, 2, 4, 6), torch.randn(1, 32, 4, 6))
    assert calls == [(1, 36, 4, 3)] * 2
    cb.entropy_parameters.append(torch.nn.Conv2d(4, 4, 3, padding=1))
    assert not cb._pointwise()
    calls.clear()
    cb(torch.randn(1, 2, 4, 6), torch.randn(1, 32, 4, 6))
    assert calls == [(1, 36, 4, 6)] * 2


def test_channel_slices_use_the_first_support_slices():
    lc = ChannelSliceLatentCodec(M=32, N=16, num_slices=4, max_support_slices=2, cc_hidden=(8, 8, 8, 8))
    # slice i sees M + 8 * min(i, 2) channels; LRP one slice more
    slices = lc.latent_codec["y"]
    assert [t[0].in_channels for t in slices.cc_mean_transforms] == [32, 40, 48, 48]
    assert [t[0].in_channels for t in slices.lrp_transforms] == [40, 48, 56, 56]
    # the parameters of slice 3 depend on slices 0 and 1 only (the *first* two), not on slice 2
    torch.manual_seed(0)
    hyper = torch.randn(1, 32, 4, 4)
    decoded = [torch.randn(1, 8, 4, 4) for _ in range(3)]
    other = decoded[:2] + [torch.randn(1, 8, 4, 4)]
    for a, b in zip(slices._slice_params(3, hyper, hyper, decoded), slices._slice_params(3, hyper, hyper, other)):
        assert torch.equal(a, b)
    changed = [decoded[0] + 1.0] + decoded[1:]
    assert not torch.equal(slices._slice_params(3, hyper, hyper, decoded)[0], slices._slice_params(3, hyper, hyper, changed)[0])
    with pytest.raises(ValueError):
        ChannelSliceLatentCodec(M=30, N=16, num_slices=4)


@pytest.mark.parametrize("in_ch, out_ch", [(8, 8), (8, 12)])
def test_depthwise_block_without_autograd_is_bitwise_the_same(in_ch, out_ch):
    torch.manual_seed(0)
    block = DepthwiseConvBlock(in_ch, out_ch)
    x = torch.randn(2, in_ch, 13, 11)
    ref = block(x).detach()
    with torch.no_grad():
        assert torch.equal(block(x), ref)


@pytest.mark.parametrize("in_ch, out_ch, k, s, p, op", [(7, 3, 5, 2, 2, 1), (5, 4, 3, 2, 1, 1), (4, 3, 9, 4, 4, 3),
                                                        (3, 6, 4, 2, 1, 0), (2, 2, 1, 1, 0, 0)])
def test_subpixel_transposed_convolution_is_the_transposed_convolution(in_ch, out_ch, k, s, p, op):
    """The phase convolution + pixel shuffle computes nn.ConvTranspose2d (values and gradients), same state dict."""
    torch.manual_seed(in_ch + k)
    sub = SubpixelConvTranspose2d(in_ch, out_ch, k, s, padding=p, output_padding=op).double()
    ref = torch.nn.ConvTranspose2d(in_ch, out_ch, k, s, padding=p, output_padding=op).double()
    assert sub.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(sub.state_dict())
    x = torch.randn(2, in_ch, 7, 5, dtype=torch.float64, requires_grad=True)
    a, b = sub(x), ref(x)
    assert a.shape == b.shape == (2, out_ch, 7 * s, 5 * s)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ga = torch.autograd.grad((a * a.detach().cos()).sum(), [x, sub.weight, sub.bias])
    gb = torch.autograd.grad((b * b.detach().cos()).sum(), [x, ref.weight, ref.bias])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    xc = x.detach().float().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(sub.float()(xc), ref.float()(xc), rtol=1e-5, atol=1e-5)


def test_subpixel_transposed_convolution_refuses_other_geometries():
    with pytest.raises(ValueError, match="kernel_size \\+ output_padding - 2 \\* padding == stride"):
        SubpixelConvTranspose2d(3, 3, 4, 2)  # padding 2, output padding 1: 4 + 1 - 4 != 2


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 4, None])  # bands of 1, 3 and 4 rows; None: the whole map
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gdn_without_autograd_is_compressais_bit_for_bit(monkeypatch, inverse, rows, threads):
    from compressai.layers import GDN as CompressAIGDN

    from gnn_lic.models import layers

    n, c, h, w = 2, 32, 16, 64
    monkeypatch.setattr(layers, "GDN_BAND_BYTES", 1 << 30 if rows is None else rows * w * c * 4)
    torch.manual_seed(0)
    ours, ref = layers.GDN(c, inverse=inverse), CompressAIGDN(c, inverse=inverse)
    with torch.no_grad():  # a gamma that mixes channels, so a band's norm is not the identity
        ours.gamma.add_(torch.rand_like(ours.gamma) * 0.05)
        ours.beta.add_(torch.rand_like(ours.beta))
    ref.load_state_dict(ours.state_dict())
    x = (torch.randn(n, c, h, w) * 3).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            got, want = ours(x), ref(x)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last)
    # under autograd, and on a contiguous map: CompressAI's forward itself
    y = ours(x.requires_grad_())
    assert torch.equal(y.detach(), want)
    y.sum().backward()
    assert x.grad is not None and ours.gamma.grad is not None
    with torch.no_grad():
        flat = x.detach().contiguous()
        assert torch.equal(ours(flat), ref(flat))


def test_gdn_bands_are_rows_of_the_budget(monkeypatch):
    from gnn_lic.models import layers

    rows = []
    real = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda x, *a, **k: rows.append(x.shape[-2]) or real(x, *a, **k))
    monkeypatch.setattr(layers, "GDN_BAND_BYTES", 8 * 4 * 10 * 3)  # 3 rows of 10 pixels of 8 channels
    x = torch.rand(1, 8, 8, 10)
    with torch.no_grad():
        layers.GDN(8)(x.contiguous(memory_format=torch.channels_last))
        assert rows == [3, 3, 2]
        layers.GDN(8)(x)  # a contiguous map: CompressAI's forward, one call
    assert rows == [3, 3, 2, 8]
