"""Shipping weights: export_checkpoint (float16 parameters) and experiments/ship_weights.py."""

import json

import pytest
import torch

from gnn_lic.codec import decode_image, encode_image
from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import CheckpointError, export_checkpoint, load_checkpoint, save_checkpoint
from gnn_lic.models.zoo import file_sha256, read_index


@pytest.fixture
def ship_weights(experiment_script):
    """``experiments/ship_weights.py`` as a module."""
    return experiment_script("ship_weights")


@pytest.fixture()
def trained_tiny(tmp_path):
    torch.manual_seed(0)
    net = create_model("gabic", size="tiny")
    path = save_checkpoint(tmp_path / "latest.pt", net, step=7, optimizer={"lr": 1.0},
                           config={"lmbda": 0.013, "data_test": "run-test-set"})
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
    stored = sum(v.numel() * v.element_size() for k, v in raw["state_dict"].items() if k in params)
    assert stored == sum(p.numel() * 2 for p in params.values())  # every parameter in float16
    loaded, _ = load_checkpoint(dst)
    for key, p in loaded.named_parameters():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, params[key].detach(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_exported_files_store_the_coder_tables_and_loading_reads_them(name, tmp_path, monkeypatch):
    """Shipped files hold the entropy coder's tables (equal ones stored once); loading keeps them
    instead of computing them with this machine's float math, and codes the same bits."""
    from compressai.models import CompressionModel

    from gnn_lic.models.checkpoint import is_table_key

    torch.manual_seed(0)
    src = save_checkpoint(tmp_path / "train.pt", create_model(name, size="tiny"))
    trained, _ = load_checkpoint(src)  # a training checkpoint: tables built at load
    dst = export_checkpoint(src, tmp_path / "ship.pt")
    raw = torch.load(dst, weights_only=True)
    tables = {k: v for k, v in raw["state_dict"].items() if is_table_key(k)}
    assert raw["tables"] is True and tables and all(v.numel() for v in tables.values())
    storages = {v.untyped_storage().data_ptr() for v in tables.values()}
    assert name != "glic" or len(storages) < len(tables)  # GLIC's five Gaussian conditionals share a copy
    monkeypatch.setattr(CompressionModel, "update", lambda *a, **k: pytest.fail("update() called at load"))
    shipped, _ = load_checkpoint(dst)
    own = shipped.state_dict()
    assert all(torch.equal(own[k], v) for k, v in tables.items())
    img = (torch.rand(40, 56, 3) * 255).to(torch.uint8).numpy()
    blob = encode_image(shipped, img)
    assert decode_image(shipped, blob).shape == img.shape


def test_training_checkpoints_build_their_tables_at_load(trained_tiny, monkeypatch):
    from compressai.models import CompressionModel

    calls = []
    real = CompressionModel.update
    monkeypatch.setattr(CompressionModel, "update", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    load_checkpoint(trained_tiny[1])
    assert calls


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


def test_ship_weights_script_and_pretrained_roundtrip(trained_tiny, tmp_path, monkeypatch, ship_weights):
    _, src = trained_tiny
    folder = tmp_path / "weights"
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"name": "gabic", "results": {"bpp": [0.5], "psnr-rgb": [30.0], "lambda": [0.013]}}))
    mod = ship_weights
    assert mod.main([str(src), "--command", "python experiments/run.py --model gabic", "--data", "d",
                     "--results", str(res), "--out", str(folder)]) == 0
    (entry,) = read_index(folder)
    assert (entry.name, entry.size, entry.qualities, entry.file) == ("gabic", "tiny", (4,), "gabic-tiny-q4.pt")
    assert entry.command.startswith("python experiments/run.py") and entry.metrics["bpp"] == [0.5]
    assert entry.metrics["data"] == "run-test-set"  # no --results-data: the training run's test folder
    assert entry.sha256 == file_sha256(folder / entry.file)
    details = json.loads((folder / entry.details).read_text())
    assert details["training"]["step"] == 7 and details["results"][0]["results"]["bpp"] == [0.5]
    monkeypatch.setenv("GNN_LIC_WEIGHTS_DIR", str(folder))
    a = create_model("gabic", size="tiny", pretrained=True)
    b = create_model("gabic", size="tiny", pretrained=True, quality=4)
    img = (torch.rand(40, 56, 3) * 255).to(torch.uint8).numpy()
    blob = encode_image(a, img)
    out = decode_image(b, blob)
    assert out.shape == img.shape
    # another quality of the same model joins the index; shipping quality 4 again replaces its entry
    assert mod.main([str(src), "--command", "c", "--data", "d", "--quality", "2", "--out", str(folder)]) == 0
    assert mod.main([str(src), "--command", "c2", "--data", "d", "--out", str(folder)]) == 0
    assert [(e.qualities, e.command) for e in read_index(folder)] == [((2,), "c"), ((4,), "c2")]
    # results measured elsewhere name their own images
    assert mod.main([str(src), "--command", "c3", "--data", "d", "--results", str(res), "--results-data", "kodak-24",
                     "--out", str(folder)]) == 0
    assert [e.metrics["data"] for e in read_index(folder) if e.command == "c3"] == ["kodak-24"]
    # too big: refused (one line, status 2) and nothing is left behind
    monkeypatch.setattr(mod, "LIMIT_MB", 1e-6)
    assert mod.main([str(src), "--command", "c", "--data", "d", "--out", str(tmp_path / "w2")]) == 2
    assert not (tmp_path / "w2" / "gabic-tiny-q4.pt").exists()


def test_ship_weights_needs_a_quality(tmp_path, capsys, ship_weights):
    src = save_checkpoint(tmp_path / "a.pt", create_model("gabic", size="tiny"))  # no training config
    assert ship_weights.main([str(src), "--command", "c", "--data", "d", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--quality" in err


def test_upgrade_index_of_the_first_format(trained_tiny, tmp_path, ship_weights):
    """A first-format index ("name-size": file) and its records become entries with quality and sha256."""
    _, src = trained_tiny
    folder = tmp_path / "w"
    folder.mkdir()
    dst = export_checkpoint(src, folder / "gabic-tiny.pt")
    (folder / "index.json").write_text(json.dumps({"gabic-tiny": "gabic-tiny.pt"}))
    record = {"file": dst.name, "sha256": file_sha256(dst), "command": "cmd", "data": "photos", "notes": "n",
              "training": {"config": {"lmbda": 0.0067, "metric": "mse", "data_test": "kodak"}},
              "results": [{"results": {"bpp": [0.3], "psnr-rgb": [28.0], "ms-ssim-rgb": [0.9], "lambda": [0.0067]}}]}
    (folder / "gabic-tiny.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="--upgrade-index"):
        read_index(folder)
    assert ship_weights.main(["--upgrade-index", str(folder)]) == 0
    (entry,) = read_index(folder)
    assert (entry.qualities, entry.command, entry.data, entry.details) == ((3,), "cmd", "photos", "gabic-tiny.json")
    assert entry.metrics == {"data": "kodak", "bpp": [0.3], "psnr-rgb": [28.0], "ms-ssim-rgb": [0.9]}
    assert sorted(json.loads((folder / "gabic-tiny.json").read_text())) == ["notes", "results", "training"]
