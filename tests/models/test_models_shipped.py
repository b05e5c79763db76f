"""The weights shipped in ``gnn_lic/weights``: present, recorded, loadable, and trained.

Each shipped checkpoint must sit next to a JSON record (exact training command, data,
final metrics, sha256) and must compress a real photo (scikit-image's built-in
``coffee.png``) through the command line to a file that decodes with the quality of a
trained codec, not a random one.
"""

import hashlib
import json

import pytest

import gnn_lic.__main__ as cli
from gnn_lic.codec import inspect_stream, read_image
from gnn_lic.codec.fingerprint import identity_digest
from gnn_lic.models.fixed_point import SCHEME
from gnn_lic.evaluation.metrics import psnr
from gnn_lic.models import create_model
from gnn_lic.models.pretrained import available_pretrained, weights_dir
from gnn_lic.evaluation.images import skimage_data_dir

SHIPPED = ["glic-small", "gabic-small"]
PHOTO = skimage_data_dir() / "coffee.png"


def test_the_promised_weights_are_shipped():
    assert set(SHIPPED) <= set(available_pretrained())
    assert (weights_dir() / "TRAINING_DATA.md").is_file()


@pytest.mark.parametrize("key", SHIPPED)
def test_record_matches_file(key):
    folder = weights_dir()
    record = json.loads((folder / f"{key}.json").read_text())
    path = folder / record["file"]
    assert path.stat().st_size < 20 * 2**20
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
    assert record["command"].startswith("python experiments/run.py --model ")
    assert "wikiphotos" in record["data"]
    assert record["training"]["step"] > 0
    # the recorded evaluation is a CompressAI-format result with real-bitstream numbers
    res = record["results"][0]["results"]
    assert len(res["bpp"]) == len(res["psnr-rgb"]) >= 1 and res["psnr-rgb"][0] > 20


@pytest.mark.slow
@pytest.mark.parametrize("key", SHIPPED)
def test_cli_roundtrip_with_shipped_weights(key, tmp_path, capsys):
    name, size = key.rsplit("-", 1)
    src = PHOTO
    img = read_image(src)
    stream, png = tmp_path / "x.glic", tmp_path / "x.png"
    assert cli.main(["compress", str(src), str(stream), "--model", name, "--size", size]) == 0
    capsys.readouterr()
    net = create_model(name, size=size, pretrained=True)
    info = inspect_stream(stream.read_bytes())
    assert info["identity"] == identity_digest(net, SCHEME)[:4].hex() and info["fixed_point"]
    assert info["overhead_bytes"] <= 32  # a shipped model's stream: short model code, implied shape
    assert cli.main(["decompress", str(stream), str(png)]) == 0
    rec = read_image(png)
    assert rec.shape == img.shape
    bpp = 8 * stream.stat().st_size / (img.shape[0] * img.shape[1])
    # trained at lambda = 0.013: an untrained small model is far below 18 dB, a trained one above it
    assert 0.05 < bpp < 2.0 and psnr(rec, img) > 18.0, (bpp, psnr(rec, img))
