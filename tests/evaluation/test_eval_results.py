import json
import math

import numpy as np
import pytest

from gnn_lic.evaluation.results import (
    get_metric,
    load_reference,
    load_results,
    make_results,
    save_results,
    sort_results,
)


def test_round_trip(tmp_path):
    doc = make_results(
        "demo",
        bpp=np.array([0.5, 0.25]),
        psnr=[32.0, 29.5],
        ms_ssim=[0.99, 0.97],
        description="unit test",
        quality=[np.int64(50), np.int64(20)],
        per_image=[{"a.png": {"bpp": 0.5, "psnr-rgb": math.inf}}, {"a.png": {"bpp": 0.25}}],
    )
    assert doc["results"]["ms-ssim-db"] == pytest.approx([20.0, -10 * math.log10(0.03)])
    path = save_results(doc, tmp_path / "sub" / "demo.json")
    raw = json.loads(path.read_text())
    assert set(raw) == {"name", "description", "results", "per_image"}
    back = load_results(path)
    assert back == doc
    assert back["per_image"][0]["a.png"]["psnr-rgb"] == math.inf
    assert back["results"]["quality"] == [50, 20]


def test_sort_and_get_metric():
    doc = make_results("x", bpp=[0.5, 0.1, 0.3], psnr=[33, 28, 31], ms_ssim=[0.99, 0.9, 0.98],
                       per_image=[{"p": 1}, {"p": 2}, {"p": 3}])
    s = sort_results(doc)
    assert s["results"]["bpp"] == [0.1, 0.3, 0.5]
    assert s["results"]["psnr-rgb"] == [28, 31, 33]
    assert [p["p"] for p in s["per_image"]] == [2, 3, 1]
    # ms-ssim-db is derived when absent, from the bare results mapping too
    bare = {"bpp": [0.1], "ms-ssim-rgb": [0.99]}
    np.testing.assert_allclose(get_metric(bare, "ms-ssim-db"), [20.0])
    with pytest.raises(KeyError):
        get_metric(bare, "psnr-rgb")


def test_invalid_documents(tmp_path):
    with pytest.raises(ValueError, match="entries"):
        make_results("bad", bpp=[0.1, 0.2], psnr=[30.0])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"name": "bad", "results": {"bpp": [1, 2], "psnr-rgb": [3]}}))
    with pytest.raises(ValueError, match="entries"):
        load_results(p)
    p.write_text(json.dumps({"bpp": [1]}))
    with pytest.raises(ValueError, match="no 'results'"):
        load_results(p)


def test_load_reference_kodak(kodak_reference_dir):
    ref = load_reference("kodak", root=kodak_reference_dir.parent)
    assert sorted(ref) == ["better", "vtm"]  # _meta.json skipped
    vtm = ref["vtm"]["results"]
    assert len(vtm["bpp"]) == len(vtm["psnr-rgb"]) == len(vtm["ms-ssim-rgb"]) == 4
    assert ref["better"]["name"] == "better"


def test_load_reference_default_root(kodak_reference_dir, monkeypatch):
    monkeypatch.setenv("GNN_LIC_SHARED", str(kodak_reference_dir.parents[1]))
    assert "vtm" in load_reference("kodak")
    with pytest.raises(FileNotFoundError):
        load_reference("no-such-dataset")
    monkeypatch.delenv("GNN_LIC_SHARED")
    with pytest.raises(FileNotFoundError, match="GNN_LIC_SHARED"):
        load_reference("kodak")
