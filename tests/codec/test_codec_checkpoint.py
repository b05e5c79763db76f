"""save_checkpoint / load_checkpoint (shipped weights: tests/models/test_models_zoo.py)."""

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import codec_testmodels as cm  # noqa: E402

from gnn_lic.codec import CodecError, decode_image, encode_image, model_fingerprint  # noqa: E402
from gnn_lic.models.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    """A model whose weights differ from a fresh create_model (as after training)."""
    net = cm.reseeded(5)
    return net


@pytest.mark.parametrize("fname", ["m.pt", "m.pth.tar", "sub/dir/m.ckpt"])
def test_save_load_roundtrip(tmp_path, trained, fname):
    img = np.random.RandomState(0).randint(0, 256, (17, 33, 3), dtype=np.uint8)
    path = tmp_path / fname
    save_checkpoint(path, trained, step=12, metrics={"bpp": np.float32(0.5), "psnr": 30.0}, lr=np.float64(1e-4),
                    args=argparse.Namespace(epochs=3, out=tmp_path), hist=np.arange(3), opt={"state": {0: torch.ones(2)}})
    net, ckpt = load_checkpoint(path)
    assert not net.training
    assert net.model_name == cm.HYPER and net.model_size == "tiny" and net.model_config == trained.model_config
    assert model_fingerprint(net) == model_fingerprint(trained)
    assert ckpt["format"] == "gnn_lic-checkpoint" and ckpt["version"] == CHECKPOINT_VERSION and ckpt["step"] == 12
    assert ckpt["metrics"] == {"bpp": 0.5, "psnr": 30.0} and type(ckpt["lr"]) is float
    assert ckpt["args"] == {"epochs": 3, "out": str(tmp_path)}
    assert torch.equal(ckpt["hist"], torch.arange(3)) and torch.equal(ckpt["opt"]["state"][0], torch.ones(2))
    assert np.array_equal(decode_image(net, encode_image(trained, img)), decode_image(trained, encode_image(trained, img)))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files


def test_save_replaces_atomically_and_refuses_bad_extras(tmp_path, trained):
    path = tmp_path / "m.pt"
    save_checkpoint(path, trained, step=1)
    save_checkpoint(path, trained, step=2)
    assert load_checkpoint(path)[1]["step"] == 2
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(path, trained, state_dict={})
    with pytest.raises(CheckpointError, match="object"):
        save_checkpoint(path, trained, thing=object())
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    bare = cm.TinyHyperprior(N=8, M=8)
    with pytest.raises(CheckpointError, match="model_config"):
        save_checkpoint(tmp_path / "b.pt", bare)


def _err(path):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, CodecError)
    return msg


def _payload(net, **over):
    base = {"format": "gnn_lic-checkpoint", "version": CHECKPOINT_VERSION, "model_config": dict(net.model_config),
            "state_dict": net.state_dict()}
    base.update(over)
    return base


def test_checkpoint_errors(tmp_path, trained):
    assert "does not exist" in _err(tmp_path / "missing.pt")
    (tmp_path / "rand.pt").write_bytes(np.random.RandomState(0).bytes(3000))
    assert "not a PyTorch checkpoint" in _err(tmp_path / "rand.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "not a PyTorch checkpoint" in _err(tmp_path / "empty.pt")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert "not a PyTorch checkpoint" in _err(tmp_path / "img.png")
    cut = tmp_path / "cut.pt"
    save_checkpoint(cut, trained)
    cut.write_bytes(cut.read_bytes()[:5000])
    assert "not a readable PyTorch checkpoint" in _err(cut)

    torch.save(trained.state_dict(), tmp_path / "sd.pt")
    assert "plain state_dict" in _err(tmp_path / "sd.pt")
    torch.save({"epoch": 3, "state_dict": trained.state_dict()}, tmp_path / "train.pth.tar")
    assert "without a gnn_lic model configuration" in _err(tmp_path / "train.pth.tar")
    torch.save([1, 2], tmp_path / "list.pt")
    assert "not a gnn_lic checkpoint" in _err(tmp_path / "list.pt")
    torch.save(_payload(trained, version=CHECKPOINT_VERSION + 1), tmp_path / "next.pt")
    assert f"version {CHECKPOINT_VERSION + 1}" in _err(tmp_path / "next.pt")
    torch.save(_payload(trained, version="1"), tmp_path / "str.pt")
    assert "version '1'" in _err(tmp_path / "str.pt")
    torch.save(_payload(trained, model_config={"size": "tiny"}), tmp_path / "nocfg.pt")
    assert "model_config" in _err(tmp_path / "nocfg.pt")
    torch.save(_payload(trained, model_config={"name": "no_such_model", "size": "tiny"}), tmp_path / "unk.pt")
    msg = _err(tmp_path / "unk.pt")
    assert "no_such_model" in msg and "not registered" in msg and cm.HYPER in msg
    torch.save(_payload(trained, model_config={"name": cm.HYPER, "size": "huge"}), tmp_path / "size.pt")
    assert "unknown size" in _err(tmp_path / "size.pt")
    torch.save(_payload(trained, model_config={"name": cm.HYPER, "size": "tiny", "bogus": 1}), tmp_path / "kw.pt")
    assert "cannot build" in _err(tmp_path / "kw.pt")
    # wrong model: the state dict of a tiny hyperprior under other configurations
    torch.save(_payload(trained, model_config={"name": cm.HYPER, "size": "small"}), tmp_path / "shape.pt")
    msg = _err(tmp_path / "shape.pt")
    assert "does not fit" in msg and "shape mismatch" in msg
    torch.save(_payload(trained, model_config={"name": cm.FACT, "size": "tiny"}), tmp_path / "keys.pt")
    msg = _err(tmp_path / "keys.pt")
    assert "does not fit" in msg and "unexpected keys" in msg and "h_a" in msg
    torch.save({**_payload(trained), "args": argparse.Namespace(a=1)}, tmp_path / "unsafe.pt")
    assert "cannot be loaded safely" in _err(tmp_path / "unsafe.pt")
    assert sum(1 for _ in load_checkpoint(tmp_path / "unsafe.pt", trusted=True)) == 2
