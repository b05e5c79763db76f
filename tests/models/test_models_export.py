"""Shipping weights: export_checkpoint (float16 parameters) and experiments/ship_weights.py."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from gnn_lic.codec import decode_image, encode_image
from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import CheckpointError, export_checkpoint, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _ship_module():
    spec = importlib.util.spec_from_file_location("ship_weights", ROOT / "experiments" / "ship_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def trained_tiny(tmp_path):
    torch.manual_seed(0)
    net = create_model("gabic", size="tiny")
    path = save_checkpoint(tmp_path / "latest.pt", net, step=7, optimizer={"lr": 1.0}, config={"lmbda": 0.013})
    return net, path


def test_export_halves_parameters_keeps_buffers(trained_tiny, tmp_path):
    net, src = trained_tiny
    dst = export_checkpoint(src, tmp_path / "ship.pt", note="x")
    raw = torch.load(dst, weights_only=True)
    assert "optimizer" not in raw and raw["note"] == "x"
    params = dict(net.named_parameters())
    for key, value in raw["state_dict"].items():
        if key in params:
            assert value.dtype == torch.float16, key
        else:
            assert value.dtype == net.state_dict()[key].dtype, key
    assert dst.stat().st_size < 0.7 * src.stat().st_size
    loaded, _ = load_checkpoint(dst)
    for key, p in loaded.named_parameters():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, params[key].detach(), rtol=1e-3, atol=1e-4)


def test_export_keeps_out_of_range_parameters_in_float32(tmp_path):
    net = create_model("gabic", size="tiny")
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = 1e6
    src = save_checkpoint(tmp_path / "a.pt", net)
    raw = torch.load(export_checkpoint(src, tmp_path / "b.pt"), weights_only=True)
    first = next(iter(dict(net.named_parameters())))
    assert raw["state_dict"][first].dtype == torch.float32


def test_export_rejects_reserved_metadata(trained_tiny, tmp_path):
    with pytest.raises(CheckpointError):
        export_checkpoint(trained_tiny[1], tmp_path / "x.pt", state_dict=1)


def test_ship_weights_script_and_pretrained_roundtrip(trained_tiny, tmp_path, monkeypatch):
    _, src = trained_tiny
    folder = tmp_path / "weights"
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"name": "gabic", "results": {"bpp": [0.5], "psnr-rgb": [30.0]}}))
    mod = _ship_module()
    assert mod.main([str(src), "--command", "python experiments/run.py --model gabic", "--data", "d",
                     "--results", str(res), "--out", str(folder)]) == 0
    assert json.loads((folder / "index.json").read_text()) == {"gabic-tiny": "gabic-tiny.pt"}
    record = json.loads((folder / "gabic-tiny.json").read_text())
    assert record["command"].startswith("python experiments/run.py") and record["training"]["step"] == 7
    assert record["results"][0]["results"]["bpp"] == [0.5]
    monkeypatch.setenv("GNN_LIC_WEIGHTS_DIR", str(folder))
    a = create_model("gabic", size="tiny", pretrained=True)
    b = create_model("gabic", size="tiny", pretrained=True)
    img = (torch.rand(40, 56, 3) * 255).to(torch.uint8).numpy()
    blob = encode_image(a, img)
    out = decode_image(b, blob)
    assert out.shape == img.shape
    # too big: refused and nothing is left behind
    monkeypatch.setattr(mod, "LIMIT_MB", 1e-6)
    assert mod.main([str(src), "--command", "c", "--data", "d", "--out", str(tmp_path / "w2")]) == 1
    assert not (tmp_path / "w2" / "gabic-tiny.pt").exists()
