"""Fixed-point entropy networks: close to float, independent of summation order, exact coding."""

import math

import pytest
import torch
from torch import nn

from gnn_lic.models import create_model
from gnn_lic.models import fixed_point as fp
from gnn_lic.models.entropy import entropy_arithmetic, supports_fixed_point
from gnn_lic.models.layers import GatedTransformCNN, ParameterAggregationBlock, conv_stack

from .helpers import amplify, images, make


def _randomised(module, std=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def _float_and_fixed(module, x):
    with torch.no_grad():
        ref = module(x).double()
    got = fp.from_act(fp.to_fixed(module)(fp.to_act(x)), torch.float64)
    return ref, got


@pytest.mark.parametrize(
    "module, in_ch",
    [
        (nn.Conv2d(12, 7, 3, padding=1), 12),
        (nn.Conv2d(9, 9, 5, padding=2, groups=9), 9),
        (GatedTransformCNN(10, 14), 10),
        (ParameterAggregationBlock(24, 16), 24),
        (conv_stack([16, 12, 8]), 16),
        (nn.Sequential(nn.Conv2d(6, 24, 3, padding=1), nn.PixelShuffle(2), nn.LeakyReLU(0.01)), 6),
    ],
)
def test_fixed_layers_are_close_to_float(module, in_ch):
    module = _randomised(module)
    x = torch.randn(2, in_ch, 7, 9, generator=torch.Generator().manual_seed(1)) * 2
    ref, got = _float_and_fixed(module, x)
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    assert err <= 1e-3 * max(1.0, ref.abs().max().item()), err
    assert err > 0 or ref.abs().max() == 0  # it is not the float path in disguise


def test_tables_match_the_functions():
    x = torch.linspace(-12, 12, 4801, dtype=torch.float64)
    a = fp.to_act(x)
    gelu = fp.from_act(fp.FixedTable(fp.gelu_table(), "gelu")(a), torch.float64)
    tanh = fp.from_act(fp.FixedTable(fp.tanh_table(), "tanh")(a), torch.float64)
    ref_gelu = torch.tensor([v * (1 + math.erf(v / math.sqrt(2))) / 2 for v in x.tolist()], dtype=torch.float64)
    assert (gelu - ref_gelu).abs().max() < 4e-5
    assert (tanh - torch.tanh(x)).abs().max() < 4e-5
    # the grid points are the exact values rounded once
    assert fp.gelu_table()[2048] == 0 and fp.gelu_table()[-1] == 8 << 16 and fp.tanh_table()[0] == -(1 << 16)


def test_conv_is_exact_under_any_summation_order():
    """Permuting the input channels (with the weight columns) reorders every sum: same bits."""
    conv = _randomised(nn.Conv2d(40, 6, 3, padding=1), std=0.5)
    x = fp.to_act(torch.randn(3, 40, 6, 5, generator=torch.Generator().manual_seed(2)) * 50)
    fixed = fp.to_fixed(conv)
    out = fixed(x.clone())
    for seed in range(3):
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
        conv_p = nn.Conv2d(40, 6, 3, padding=1)
        with torch.no_grad():
            conv_p.weight.copy_(conv.weight[:, perm])
            conv_p.bias.copy_(conv.bias)
        assert torch.equal(fp.to_fixed(conv_p)(x[:, perm].clone()), out)
    # a sum over the channels one at a time, in reverse: the same integers
    w = fixed.weight.reshape(6, 40, 9)
    cols = torch.nn.functional.unfold(x, 3, padding=1).reshape(3, 40, 9, -1)
    acc = torch.zeros(3, 6, cols.shape[-1], dtype=torch.float64)
    for c in reversed(range(40)):
        acc = acc + torch.einsum("ok,bkl->bol", w[:, c], cols[:, c])
    acc = acc + fixed.bias.reshape(1, -1, 1)
    assert torch.equal(torch.round(acc * 2.0**-fixed.frac_bits).clamp(-fp.ACT_MAX, fp.ACT_MAX).reshape(out.shape), out)


def test_layer_norm_is_exact_under_channel_permutation():
    block = _randomised(GatedTransformCNN(16), std=0.3)
    norm = fp.to_fixed(block.norm)
    x = fp.to_act(torch.randn(2, 16, 5, 5, generator=torch.Generator().manual_seed(3)) * 100)
    out = norm(x.clone())
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(4))
    block.norm.weight.data = block.norm.weight.data[perm]
    block.norm.bias.data = block.norm.bias.data[perm]
    assert torch.equal(fp.to_fixed(block.norm)(x[:, perm].clone()), out[:, perm])


def test_accumulation_bound_is_checked():
    conv = nn.Conv2d(4, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1e9)
    with pytest.raises(ValueError, match="too large"):
        fp.to_fixed(conv)
    # every layer actually converted keeps its worst-case sum below 2**52
    for m in (nn.Conv2d(300, 8, 3), nn.Conv2d(8, 8, 1)):
        f = fp.to_fixed(_randomised(m, std=1.0))
        assert float(f.weight.abs().sum(1).max()) * f.in_max + float(f.bias.abs().max()) <= fp.ACC_LIMIT


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_fixed_codec_round_trip_and_batch_independence(name):
    net = amplify(make(name))
    net.update(force=True)
    net.eval()
    assert supports_fixed_point(net)
    x = images(2, 48, 80, seed=5)
    lc = net.latent_codec
    with torch.no_grad():
        y = net.g_a(torch.nn.functional.pad(x, (0, 48, 0, 16), mode="replicate"))
        enc = lc.compress(y)
        dec = lc.decompress(enc["strings"], enc["shape"])["y_hat"]
        assert torch.equal(dec, enc["y_hat"])
        one = lc.decompress([[enc["strings"][0][1]], [enc["strings"][1][1]]], enc["shape"])["y_hat"]
        assert torch.equal(one[0], dec[1])
        with entropy_arithmetic(net, "float"):
            flt = lc.compress(y)
        with entropy_arithmetic(net, "fixed"):
            fx16 = lc.compress(y)
        with entropy_arithmetic(net, "fixed8"):
            w8 = lc.compress(y)
        assert lc.arithmetic == "fixed8"  # both codecs' default (scheme w8), restored
    assert torch.equal(dec, w8["y_hat"])
    # scheme fx16: the float y_hat up to the means' last bits
    assert ((fx16["y_hat"] - flt["y_hat"]).abs() > 1e-3).float().mean() < 0.01
    # scheme w8 (8-bit weights): the means move by a fraction of a step; few symbols change
    diff = (w8["y_hat"] - flt["y_hat"]).abs()
    assert float(diff.median()) < 0.02
    assert float((diff > 0.5).float().mean()) < 0.02


def test_training_forward_is_unchanged_by_the_fixed_path():
    net = make("glic")
    x = images(1, 32, 32)
    with torch.no_grad():
        a = net(x)["x_hat"]
        net.update(force=True)
        net.eval()
        net.compress(x)
        net.train()
        b = net(x)["x_hat"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_converted_networks_survive_a_float_forward_and_follow_weight_changes(name):
    """The fixed-point networks are converted once per set of weights: a float forward between two
    compresses (CompressAI's masked convolutions re-mask their weight on every call) keeps them,
    an optimiser step on an entropy network's weights converts again."""
    net = make(name)
    net.update(force=True)
    net.eval()
    x = images(1, 64, 64)
    lc = net.latent_codec
    with torch.no_grad():
        net.compress(x)
        first = lc._fixed_nets(torch.device("cpu"))
        net(x)
        with entropy_arithmetic(net, "float"):
            net.compress(x)
        assert lc._fixed_nets(torch.device("cpu")) is first
        for p in next(iter(lc._fixed_modules().values())).parameters():
            p.mul_(1.0)  # an in-place update, as an optimiser's: the weights' version changes
        assert lc._fixed_nets(torch.device("cpu")) is not first


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_update_and_compress_convert_before_the_analysis_transform(monkeypatch, name):
    """``update`` converts the networks of the codec's arithmetic (none for "float"); ``compress`` converts
    changed weights before ``g_a`` runs, not in the middle of the latent coding."""
    from gnn_lic.models import entropy

    calls = []
    real = entropy.to_fixed
    monkeypatch.setattr(entropy, "to_fixed", lambda m, k, int8: calls.append("convert") or real(m, k, int8))
    net = make(name)
    with entropy_arithmetic(net, "float"):
        net.update(force=True)
    assert calls == []
    net.update(force=True)
    converted = len(calls)
    assert converted == len(net.latent_codec._fixed_modules())
    net.eval()
    net.g_a.register_forward_pre_hook(lambda m, a: calls.append("g_a"))
    x = images(1, 64, 64)
    net.compress(x)
    assert calls[converted:] == ["g_a"]  # nothing converted again
    with torch.no_grad():
        for p in net.latent_codec.parameters():
            p.mul_(1.0)  # a new version of every weight
    calls.clear()
    net.compress(x)
    assert calls == ["convert"] * converted + ["g_a"]


def test_unsupported_module_is_refused():
    with pytest.raises(TypeError, match="no fixed-point version"):
        fp.to_fixed(nn.Sigmoid())
    assert not supports_fixed_point(create_model("glic", size="tiny").g_a)


def test_large_fan_in_layer_clamps_its_own_input():
    """GABIC's paper-size slice networks (fan-in 512 x 3 x 3): the layer keeps enough weight
    levels by clamping its own input to a smaller range; in range it stays close to float."""
    torch.manual_seed(0)
    conv = nn.Conv2d(512, 224, 3, padding=1)  # default init: |w| up to 1/sqrt(4608)
    fixed = fp.FixedConv2d(conv, "lrp")
    assert fixed.in_max < fp.ACT_MAX
    assert float(fixed.weight.abs().max()) >= fp.MIN_WEIGHT_LEVELS
    x = torch.randn(1, 512, 6, 6) * 4
    got = fp.from_act(fixed(fp.to_act(x)), torch.float64)
    torch.testing.assert_close(got, conv.double()(x.double()), atol=1e-2, rtol=0)  # 10-bit weights, fan-in 4608
    big = torch.full((1, 512, 3, 3), 2.0**20)  # beyond the layer's range: clamped, still exact integers
    out = fixed(fp.to_act(big))
    assert torch.equal(out, out.round()) and bool(torch.isfinite(out).all())
