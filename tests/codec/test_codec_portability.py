"""Decoded latents do not depend on the decoding process: threads, compiled kernels, dtype.

Encoding runs in one fresh process with 2 threads; decoding in others with 1 thread and
``GNN_LIC_NUMBA=0``, with float64 transforms, and (scheme w8) with each CPU kernel of its products. The shipped weights are used: trained
entropy networks put many scales near the table boundaries, where float noise bites.
The latents must be equal bit for bit; the decoded pixels (float synthesis) only up to float noise.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gnn_lic.models.zoo import shipped_weights

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, torch
role, name, threads, path, mode, dtype = sys.argv[1:7]
torch.set_num_threads(int(threads))
from gnn_lic.models import create_model
from gnn_lic.models.base import from_jsonable, pad_to_multiple
from gnn_lic.models.entropy import entropy_arithmetic
net = create_model(name, size="small", pretrained=True).eval()
if dtype == "float64":
    net = net.double()
with torch.no_grad(), entropy_arithmetic(net, mode):
    if role == "encode":
        g = torch.Generator().manual_seed(7)
        x = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 80, 112, generator=g), 3, 1, 1)
        enc = net.compress(x)
        y = net.latent_codec.decompress(enc["strings"], from_jsonable(enc["shape"]["latent"]))["y_hat"]
        x_hat = net.decompress(enc["strings"], enc["shape"])["x_hat"]
        torch.save({"strings": enc["strings"], "shape": enc["shape"], "y_hat": y.float(), "x_hat": x_hat.float()}, path)
    else:
        blob = torch.load(path, weights_only=False)
        y = net.latent_codec.decompress(blob["strings"], from_jsonable(blob["shape"]["latent"]))["y_hat"]
        x_hat = net.decompress(blob["strings"], blob["shape"])["x_hat"]
        torch.save({"y_hat": y.float(), "x_hat": x_hat.float()}, path + ".dec")
"""

#: least PSNR (dB) between the pixels decoded in two processes from equal latents: float noise in the
#: synthesis (another summation order, a graph decision near a tie) stays far above it; a wrong
#: transform (a kernel that overwrites its input, say) falls far below
PIXEL_AGREEMENT_DB = 50.0


def _psnr(a, b):
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def _run(role, name, threads, path, mode="fixed", dtype="float32", numba=True, products="auto"):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "GNN_LIC_W8_PRODUCTS": products}
    if not numba:
        env["GNN_LIC_NUMBA"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, role, name, str(threads), str(path), mode, dtype],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_latents_identical_across_processes_threads_and_kernels(name, tmp_path):
    if not shipped_weights(name, "small"):
        pytest.skip(f"no shipped weights for {name}-small")
    blob = tmp_path / "enc.pt"
    _run("encode", name, 2, blob)
    enc = torch.load(blob, weights_only=False)
    ref, ref_pixels = enc["y_hat"], enc["x_hat"]
    assert ref.abs().max() > 0.5  # non-trivial latents
    settings = [(1, "float32", False, "auto"), (1, "float64", True, "auto")]
    if name == "gabic":  # scheme w8: the CPU kernels of its products that "auto" does not choose here
        from gnn_lic.models.fixed_point import onednn
        from gnn_lic.models.fixed_point.int8 import w8_products

        chosen = w8_products(torch.device("cpu"))
        kinds = ["digits", "float64"] + (["onednn"] if onednn.available() else [])
        settings += [(1, "float32", True, kind) for kind in kinds if kind != chosen]
    for i, (threads, dtype, numba, products) in enumerate(settings):
        copy = tmp_path / f"dec{i}.pt"
        copy.write_bytes(blob.read_bytes())
        _run("decode", name, threads, copy, dtype=dtype, numba=numba, products=products)
        got = torch.load(str(copy) + ".dec")
        where = f"{threads} thread(s), {dtype}, numba={numba}, {products}"
        assert torch.equal(got["y_hat"], ref), f"{where}: latents differ"
        assert _psnr(got["x_hat"], ref_pixels) > PIXEL_AGREEMENT_DB, f"{where}: pixels differ beyond float noise"


def test_the_portability_report_codes_with_the_models_own_scheme_unless_told():
    from gnn_lic.codec.portability import _paths
    from gnn_lic.models import create_model

    glic, gabic = create_model("glic", size="tiny"), create_model("gabic", size="tiny")
    assert _paths(glic, None) == _paths(gabic, None) == (("fixed", "fixed8"), ("float", "float"))
    assert _paths(gabic, "fx16")[0] == _paths(glic, "fx16")[0] == ("fixed", "fixed")
    assert _paths(glic, "w8")[0] == ("fixed", "fixed8")
    glic.latent_codec.arithmetic = "fixed"  # a codec whose own scheme is fx16
    assert _paths(glic, None)[0] == ("fixed", "fixed")


@pytest.mark.parametrize("has_onednn", [False, True])
def test_the_gpu_and_onednn_join_the_decode_settings_only_where_available(has_onednn, monkeypatch):
    from gnn_lic.codec import portability
    from gnn_lic.models.fixed_point import onednn

    monkeypatch.setattr(onednn, "_available", has_onednn)
    base = set(portability.SETTINGS) | ({"w8-onednn-products"} if has_onednn else set())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert set(portability.settings()) == base
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    got = portability.settings()
    assert set(got) == base | {"cuda"}
    assert got["cuda"][1][-2:] == ["--device", "cuda"]


def test_decode_only_needs_an_earlier_encode_and_encoding_needs_images(tmp_path, capsys):
    from gnn_lic.codec.portability import main

    with pytest.raises(SystemExit) as exc:
        main(["--decode-only", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "no encode.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "new"), "--images", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # nothing written on bad input
    (tmp_path / "encode.json").write_text(json.dumps([{"image": "a.png", "model": "gabic-small"}]))
    with pytest.raises(SystemExit) as exc:
        main(["--decode-only", "--out", str(tmp_path), "--model", "glic", "--size", "small"])
    assert exc.value.code == 2 and "holds strings of gabic-small, not glic-small" in capsys.readouterr().err
    if not torch.cuda.is_available():
        (tmp_path / "imgs").mkdir()
        with pytest.raises(SystemExit) as exc:
            main(["--out", str(tmp_path / "new"), "--images", str(tmp_path / "imgs"), "--enc-device", "cuda"])
        assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
