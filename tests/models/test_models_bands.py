"""GLIC's and GABIC's transforms without autograd run their high-resolution layers band by band:
the same function as the whole-map path, bit for bit, and the memory budget changes no bit."""

import numpy as np
import pytest
import torch

from gnn_lic.codec import decode_image, encode_image
from gnn_lic.codec.budget import job_plan
from gnn_lic.models import create_model, gabic, glic_transforms
from gnn_lic.nn import banded, winograd43

MODELS = ["glic", "gabic"]


#: image pixels of a band that make several bands on the test-sized images
SMALL_BANDS = 64 * 64


@pytest.fixture(autouse=True)
def small_bands(monkeypatch):
    monkeypatch.setattr(gabic, "STAGE_PIXELS", SMALL_BANDS)
    monkeypatch.setattr(glic_transforms, "STAGE_PIXELS", SMALL_BANDS)


@pytest.fixture(scope="module", params=MODELS)
def net(request):
    torch.manual_seed(0)
    model = create_model(request.param, size="tiny").eval()
    model.update(force=True)
    return model


@pytest.mark.parametrize("hw", [(64, 128), (256, 64)])
def test_banded_transforms_compute_the_whole_map_function(net, hw):
    x = torch.rand(1, 3, *hw)
    y_ref = net.g_a(x).detach()  # autograd on: the whole-map path
    x_ref = net.g_s(y_ref).detach()
    with torch.no_grad():
        y, x_hat = net.g_a(x), net.g_s(y_ref)
    # a band that missed part of its receptive field would be off by far more than rounding
    assert torch.allclose(y, y_ref, atol=1e-4, rtol=0)
    assert torch.allclose(x_hat, x_ref, atol=1e-4, rtol=0)


def test_gabic_bands_need_their_halo(monkeypatch):
    torch.manual_seed(0)
    net = create_model("gabic", size="tiny").eval()
    x = torch.rand(1, 3, 256, 64)
    y_ref = net.g_a(x).detach()
    monkeypatch.setitem(net.g_a.geometry, "halo", 0)
    with torch.no_grad():
        assert (net.g_a(x) - y_ref).abs().max() > 1e-3
    # the synthesis's halo is the least that works: the same bits as a generous one, one alignment step less
    # misses rows (the bands compute each row the same way whatever their height: equality is exact)
    geometry = net.g_s.geometry
    tight, align = geometry["halo"], geometry["align"]
    less = -(-tight // align) * align - align  # banded_stage rounds a halo up to a multiple of align
    assert tight > less >= 0
    with torch.no_grad():
        y = net.g_a(x)
        monkeypatch.setitem(geometry, "halo", 4 * tight)
        generous = net.g_s(y)
        monkeypatch.setitem(geometry, "halo", tight)
        assert torch.equal(net.g_s(y), generous)
        monkeypatch.setitem(geometry, "halo", less)
        assert not torch.equal(net.g_s(y), generous)


def test_the_transforms_use_several_bands(net, monkeypatch):
    calls = []
    real = banded.stage_bands
    monkeypatch.setattr(banded, "stage_bands", lambda *a: calls.append(real(*a)) or calls[-1])
    with torch.no_grad():
        net.g_s(net.g_a(torch.rand(1, 3, 256, 64)))
    assert len(calls) >= 2 and all(len(bands) >= 2 for bands in calls)


@pytest.mark.parametrize("winograd", [False, True])
def test_bands_and_budget_change_no_bit_of_a_stream(net, winograd, monkeypatch):
    """Several bands, one band (the whole map) and any memory budget: the same stream and pixels. Also with
    the test models' narrow layers on Winograd's F(4x4, 3x3) (:mod:`gnn_lic.nn.winograd43`), whose bands
    start on its tile grid."""
    if winograd:
        monkeypatch.setattr(winograd43, "MIN_CHANNELS", 1)
    rng = np.random.default_rng(0)
    img = (rng.random((200, 90, 3)) * 255).astype(np.uint8)  # odd size: padded to 256x128
    streams, pixels = [], []
    for band_pixels, budget in [(SMALL_BANDS, None), (SMALL_BANDS, "2G"), (1 << 30, None)]:
        monkeypatch.setattr(gabic, "STAGE_PIXELS", band_pixels)
        monkeypatch.setattr(glic_transforms, "STAGE_PIXELS", band_pixels)
        with job_plan(net, *img.shape[:2], budget, "test"):
            blob = encode_image(net, img)
            streams.append(blob)
            pixels.append(decode_image(net, blob))
    assert all(s == streams[0] for s in streams[1:])
    assert all(np.array_equal(p, pixels[0]) for p in pixels[1:])


def test_transforms_run_on_channels_last_memory(net):
    """Both transforms compute on an NHWC copy of their input and return a contiguous map: the
    first convolution sees channels-last memory; the values are the NCHW computation's (``run``
    on contiguous memory) up to rounding."""
    seen = []
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    first_convs = [next(m for m in t.modules() if isinstance(m, convs)) for t in (net.g_a, net.g_s)]
    hooks = [c.register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
             for c in first_convs]
    x = torch.rand(1, 3, 64, 128)
    try:
        with torch.no_grad():
            y = net.g_a(x)
            x_hat = net.g_s(y)
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(seen)
    assert y.is_contiguous() and x_hat.is_contiguous()
    with torch.no_grad():
        assert torch.allclose(net.g_a.run(x), y, atol=1e-4, rtol=0)
        assert torch.allclose(net.g_s.run(y), x_hat, atol=1e-4, rtol=0)


def test_transforms_train_on_channels_last_memory(net):
    """Under autograd both models' transforms run on channels-last memory, as without it (graph layers
    read nodes as rows of channels; oneDNN's strided and transposed convolutions are faster there, and one
    layout spares conversions in the backward pass). The values are the no-autograd ones up to rounding."""
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    first = next(m for m in net.g_a.modules() if isinstance(m, convs))
    seen = []
    hook = first.register_forward_pre_hook(lambda m, a: seen.append(banded.memory_layout(a[0]) == torch.channels_last))
    x = torch.rand(1, 3, 64, 128)
    try:
        y = net.g_a(x)
        with torch.no_grad():
            y_eval = net.g_a(x)
    finally:
        hook.remove()
    assert len(seen) > 1 and all(seen)  # the whole map under autograd, then the bands
    assert y.requires_grad and y.is_contiguous()
    assert torch.allclose(y.detach(), y_eval, atol=1e-4, rtol=0)
