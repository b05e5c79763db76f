"""Padding, cropping and shape plumbing shared by every model (gnn_lic.models.base)."""

import pytest
import torch
from torch import nn

from gnn_lic.models import create_model
from gnn_lic.models.base import (
    PaddedCompressionModel,
    crop_to,
    earlier_state_dict,
    from_jsonable,
    pad_to_multiple,
    to_jsonable,
    upgrade_state_dict,
)
from gnn_lic.models.checkpoint import load_checkpoint, load_state_into

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


class _Inner(nn.Module):
    renamed_keys = {"old.": "new."}

    def __init__(self):
        super().__init__()
        self.new = nn.Linear(2, 2)


class _Outer(nn.Module):
    renamed_keys = {"a.": "inner."}

    def __init__(self):
        super().__init__()
        self.inner = _Inner()
        self.keep = nn.Linear(2, 1)


def test_state_dict_key_history_renames_nested_modules_both_ways():
    net = _Outer()
    old = {"a.old.weight": torch.ones(2, 2), "a.old.bias": torch.zeros(2), "keep.weight": torch.ones(1, 2),
           "keep.bias": torch.zeros(1)}
    new = upgrade_state_dict(net, old)
    assert list(new) == ["inner.new.weight", "inner.new.bias", "keep.weight", "keep.bias"]
    net.load_state_dict(new)
    assert list(earlier_state_dict(net)) == list(old)
    assert list(upgrade_state_dict(net, net.state_dict())) == list(net.state_dict())  # current keys stay
    assert earlier_state_dict(nn.Linear(2, 2)) is None


def test_a_glic_checkpoint_from_before_the_wavelet_rename_loads(tmp_path):
    """``g_a.aux``/``g_s.aux`` (the wavelet chains' earlier name) load into ``.wavelet``."""
    torch.manual_seed(0)
    net = create_model("glic", size="tiny")
    old = {k.replace(".wavelet.", ".aux."): v for k, v in net.state_dict().items()}
    assert sum(".aux." in k for k in old) > 0 and not any(".aux." in k for k in net.state_dict())
    fresh = create_model("glic", size="tiny")
    fresh.load_state_dict(old)  # CompressAI-style: the model's own load_state_dict
    other = create_model("glic", size="tiny")
    load_state_into(other, old)  # the checkpoint loader
    for a, b, c in zip(net.state_dict().values(), fresh.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    torch.save({"format": "gnn_lic-checkpoint", "version": 1, "model_config": net.model_config, "state_dict": old},
               tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert torch.equal(loaded.g_s.wavelet[0].proj.linear.weight, net.g_s.wavelet[0].proj.linear.weight)


@pytest.mark.parametrize("name", ["glic", "gabic", "wacnn"])
def test_no_current_key_looks_like_an_earlier_one(name):
    """An earlier key prefix must never match a current key, or upgrading would move it."""
    net = create_model(name, size="tiny")
    state = net.state_dict()
    assert list(upgrade_state_dict(net, state)) == list(state)


def test_init_config_flattens_an_options_dataclass_and_refuses_clashes():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Options:
        width: int = 2
        depth: int = 1

    class Toy(PaddedCompressionModel):
        def __init__(self, scale: float = 1.0, options: Options = Options()):
            super().__init__()

    class Clash(PaddedCompressionModel):
        def __init__(self, width: int = 3, options: Options = Options()):
            super().__init__()

    assert Toy(options=Options(width=5)).init_config == {"class": Toy.__qualname__,
                                                          "args": {"scale": 1.0, "width": 5, "depth": 1}}
    with pytest.raises(TypeError, match="width"):
        Clash()
