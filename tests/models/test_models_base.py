"""Padding, cropping and shape plumbing shared by every model (gnn_lic.models.base)."""

import pytest
import torch

from gnn_lic.models.base import crop_to, from_jsonable, pad_to_multiple, to_jsonable

from .helpers import images, make


@pytest.mark.parametrize("hw,multiple,padded", [((33, 47), 16, (48, 48)), ((64, 64), 64, (64, 64)), ((1, 65), 64, (64, 128))])
def test_pad_to_multiple(hw, multiple, padded):
    x = torch.randn(2, 3, *hw)
    y, orig = pad_to_multiple(x, multiple)
    assert orig == hw and y.shape[-2:] == padded
    assert torch.equal(y[..., : hw[0], : hw[1]], x)  # bottom/right only
    # replicate: the padded rows/columns repeat the last row/column
    assert torch.equal(y[..., hw[0] :, : hw[1]], x[..., -1:, :].expand_as(y[..., hw[0] :, : hw[1]]))
    assert torch.equal(y[..., : hw[0], hw[1] :], x[..., :, -1:].expand_as(y[..., : hw[0], hw[1] :]))
    assert torch.equal(crop_to(y, orig), x)


def test_pad_is_noop_on_multiples():
    x = torch.randn(1, 3, 128, 64)
    y, _ = pad_to_multiple(x, 64)
    assert y is x


def test_crop_rejects_growth():
    with pytest.raises(ValueError):
        crop_to(torch.zeros(1, 3, 4, 4), (5, 4))


def test_shape_json_round_trip():
    shape = {"y": [torch.Size([2, 4, 8]), (16, 4, 8)], "hyper": torch.Size([1, 2])}
    js = to_jsonable(shape)
    assert js == {"y": [[2, 4, 8], [16, 4, 8]], "hyper": [1, 2]}
    assert from_jsonable(js) == {"y": ((2, 4, 8), (16, 4, 8)), "hyper": (1, 2)}
    assert from_jsonable(js)["hyper"] == torch.Size([1, 2])


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_model_pads_internally(name):
    """forward(x) == crop(forward(replicate-padded x)) in eval mode."""
    net = make(name).eval()
    x = images(1, 33, 47)
    xp, hw = pad_to_multiple(x, net.pad_multiple)
    with torch.no_grad():
        a = net(x)
        b = net(xp)
    assert torch.equal(a["x_hat"], b["x_hat"][..., :33, :47])
    assert torch.equal(a["likelihoods"]["y"], b["likelihoods"]["y"])


def test_decompress_needs_the_compress_shape():
    net = make("gabic")
    net.update(force=True)
    net.eval()
    enc = net.compress(images(1, 20, 30))
    with pytest.raises(ValueError, match="shape"):
        net.decompress(enc["strings"], enc["shape"]["latent"])
    out = net.decompress(enc["strings"], {"latent": enc["shape"]["latent"], "image": [10, 12]})
    assert out["x_hat"].shape == (1, 3, 10, 12)
