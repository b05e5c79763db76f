import json

import pytest
from PIL import Image

from gnn_lic.evaluation.__main__ import main
from gnn_lic.evaluation.results import load_results, make_results, save_results


def test_cli_anchors(tmp_path, tiny_images, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    for name, img in tiny_images:
        Image.fromarray(img).save(data / f"{name}.png")
    out = tmp_path / "out"
    with pytest.warns(UserWarning):
        rc = main(["anchors", "--data", str(data), "--out", str(out), "--codecs", "jpeg", "webp",
                   "--qualities", "20", "80"])
    assert rc == 0
    jpeg = load_results(out / "jpeg.json")
    assert jpeg["results"]["quality"] == [20, 80]
    assert set(jpeg["per_image"][0]) == {"astronaut.png", "chelsea.png"}
    assert (out / "webp.json").exists() and not (out / "avif.json").exists()
    for png in ("rd_psnr.png", "rd_ms-ssim-db.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "jpeg q=80" in capsys.readouterr().out


def test_cli_bd(tmp_path, capsys):
    rates = [0.1, 0.2, 0.4, 0.8]
    psnrs = [28.0, 30.5, 33.0, 35.5]
    a = save_results(make_results("anchor", rates, psnrs), tmp_path / "a.json")
    t = save_results(make_results("test", [r * 0.8 for r in rates], psnrs), tmp_path / "t.json")
    assert main(["bd", "--anchor", str(a), "--test", str(t), "--method", "cubic"]) == 0
    text = capsys.readouterr().out
    line = [ln for ln in text.splitlines() if ln.startswith("test")][0]
    assert float(line.split()[1]) == pytest.approx(-20.0)
    assert "method: cubic" in text


def test_cli_bd_reference(kodak_reference_dir, monkeypatch, capsys):
    monkeypatch.setenv("GNN_LIC_SHARED", str(kodak_reference_dir.parents[1]))
    assert main(["bd", "--anchor", "ref:kodak/vtm", "--test", "ref:kodak/better"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("better")][0]
    assert float(line.split()[1]) == pytest.approx(-20.0)
