"""encode_image / decode_image against the model's own compress / decompress."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import codec_testmodels as cm  # noqa: E402

from gnn_lic.codec import CodecError, ModelMismatchError, decode_image, encode_image, inspect_stream  # noqa: E402
from gnn_lic.models import create_model  # noqa: E402


def _reference(net, img):
    """What the model itself reconstructs in eval mode, cropped and rounded to uint8."""
    h, w = img.shape[:2]
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        out = net.compress(x)
        x_hat = net.decompress(out["strings"], out["shape"])["x_hat"]
    ref = (x_hat[0, :, :h, :w].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return out, ref


@pytest.mark.parametrize("name", [cm.HYPER, cm.FACT])
@pytest.mark.parametrize("hw", [(1, 1), (17, 33), (32, 48)])
def test_roundtrip_equals_model_reconstruction(name, hw):
    net = cm.make(name)
    img = np.random.RandomState(hw[0]).randint(0, 256, (*hw, 3), dtype=np.uint8)
    data = encode_image(net, img)
    out = decode_image(net, data)
    ref_out, ref = _reference(net, img)
    assert out.dtype == np.uint8 and out.shape == (*hw, 3)
    assert np.array_equal(out, ref)
    info = inspect_stream(data)
    assert info["payload_bytes"] == sum(len(s) for g in ref_out["strings"] for s in g)
    assert (info["height"], info["width"]) == hw
    assert encode_image(net, img) == data  # deterministic


def test_reconstruction_depends_on_the_image():
    net = cm.make()
    a = np.zeros((32, 48, 3), np.uint8)
    b = np.full((32, 48, 3), 255, np.uint8)
    assert encode_image(net, a) != encode_image(net, b)
    assert not np.array_equal(decode_image(net, encode_image(net, a)), decode_image(net, encode_image(net, b)))


def test_codec_crops_a_larger_reconstruction():
    net = cm.make(out_mode="padded")
    img = np.random.RandomState(0).randint(0, 256, (17, 33, 3), dtype=np.uint8)
    out = decode_image(net, encode_image(net, img))
    _, ref = _reference(net, img)
    assert out.shape == (17, 33, 3)
    assert np.array_equal(out, ref)


def test_smaller_reconstruction_is_an_error():
    net = cm.make(out_mode="short")
    data = encode_image(net, np.zeros((17, 33, 3), np.uint8))
    with pytest.raises(CodecError, match="smaller"):
        decode_image(net, data)


def test_mismatched_models_are_refused_saying_what_differs():
    net = cm.make()
    data = encode_image(net, np.zeros((8, 8, 3), np.uint8))
    other_weights = cm.make()  # same name, size and config
    other_weights.load_state_dict(cm.make(seed=1).state_dict())
    with pytest.raises(ModelMismatchError, match="weights"):
        decode_image(other_weights, data)
    with pytest.raises(ModelMismatchError, match="configuration"):
        decode_image(cm.make(seed=0), data)  # the seed kwarg is part of model_config
    with pytest.raises(ModelMismatchError, match=f"'{cm.HYPER}', not '{cm.FACT}'"):
        decode_image(cm.make(cm.FACT), data)
    with pytest.raises(ModelMismatchError, match="size 'tiny', not size 'small'"):
        decode_image(cm.make(size="small"), data)
    other_cfg = cm.make()
    other_cfg.model_config = {**other_cfg.model_config, "lmbda": 0.1}
    with pytest.raises(ModelMismatchError, match="configuration"):
        decode_image(other_cfg, data)
    # weights changed in place after encoding
    changed = cm.make()
    assert decode_image(changed, data).shape == (8, 8, 3)
    with torch.no_grad():
        next(changed.g_s.parameters()).add_(1e-3)
    with pytest.raises(ModelMismatchError, match="weights"):
        decode_image(changed, data)


def test_training_mode_is_restored_and_does_not_change_the_stream():
    net = cm.make()
    img = np.random.RandomState(3).randint(0, 256, (9, 9, 3), dtype=np.uint8)
    data = encode_image(net, img)
    net.train()
    assert encode_image(net, img) == data
    assert net.training
    net.eval()


def test_model_must_be_updated_and_identified():
    net = create_model(cm.HYPER, size="tiny")
    with pytest.raises(CodecError, match="update"):
        encode_image(net, np.zeros((4, 4, 3), np.uint8))
    bare = cm.TinyHyperprior(N=8, M=8)
    bare.update(force=True)
    with pytest.raises(CodecError, match="model_name"):
        encode_image(bare, np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3)), np.zeros((0, 4, 3), np.uint8)]
)
def test_bad_image_arrays_are_refused(bad):
    with pytest.raises(CodecError):
        encode_image(cm.make(), bad)


def test_read_only_and_strided_arrays_are_accepted():
    net = cm.make()
    img = np.random.RandomState(5).randint(0, 256, (10, 12, 3), dtype=np.uint8)
    ro = img.copy()
    ro.flags.writeable = False
    assert encode_image(net, ro) == encode_image(net, img)
    big = np.zeros((20, 24, 3), np.uint8)
    big[::2, ::2] = img
    assert encode_image(net, big[::2, ::2]) == encode_image(net, img)


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_float_and_fixed_streams_of_one_model(name):
    """Both arithmetics write format 2; the flag, not the model's current mode, picks the decoder."""
    from gnn_lic.models.entropy import entropy_arithmetic

    torch.manual_seed(0)
    net = create_model(name, size="tiny")
    net.update(force=True)
    net.eval()
    img = np.random.RandomState(3).randint(0, 256, (20, 36, 3), dtype=np.uint8)
    fixed = encode_image(net, img)
    with entropy_arithmetic(net, "float"):
        flt = encode_image(net, img)
        assert np.array_equal(decode_image(net, fixed), decode_image(net, fixed))
    assert inspect_stream(fixed)["fixed_point"] and not inspect_stream(flt)["fixed_point"]
    assert inspect_stream(fixed)["shape"] is None and inspect_stream(flt)["shape"] is not None
    assert decode_image(net, flt).shape == decode_image(net, fixed).shape == (20, 36, 3)
    with entropy_arithmetic(net, "float"):
        fixed_in_float_mode = decode_image(net, fixed)
    assert np.array_equal(fixed_in_float_mode, decode_image(net, fixed))
