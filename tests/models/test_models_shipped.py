"""The weights shipped in ``gnn_lic/weights``: present, recorded, loadable, and trained.

Each shipped checkpoint must be listed in the zoo's index with its record (exact training
command, data, final metrics, sha256) and must compress a real photo (scikit-image's built-in
``coffee.png``) through the command line to a file that decodes with the quality of a
trained codec, not a random one.
"""

import json

import pytest

import gnn_lic.__main__ as cli
from gnn_lic.codec import inspect_stream, read_image
from gnn_lic.codec.fingerprint import identity_digest
from gnn_lic.models.fixed_point import SCHEMES
from gnn_lic.evaluation.metrics import psnr
from gnn_lic.models import create_model
from gnn_lic.models.zoo import QUALITY_LAMBDAS, file_sha256, shipped_weights, weights_dir
from gnn_lic.evaluation.images import skimage_data_dir

SHIPPED = ["glic-small", "gabic-small"]
PHOTO = skimage_data_dir() / "coffee.png"


def test_the_promised_weights_are_shipped():
    assert set(SHIPPED) <= {f"{e.name}-{e.size}" for e in shipped_weights()}
    assert (weights_dir() / "TRAINING_DATA.md").is_file()


@pytest.mark.parametrize("key", SHIPPED)
def test_record_matches_file(key):
    (entry,) = [e for e in shipped_weights() if f"{e.name}-{e.size}" == key]
    assert entry.path.stat().st_size < 20 * 2**20
    assert file_sha256(entry.path) == entry.sha256
    assert entry.command.startswith("python experiments/run.py --model ")
    assert "wikiphotos" in entry.data
    # one variable-rate model serving the six qualities of the GLIC paper's MSE lambdas
    assert entry.variable_rate and entry.qualities == (1, 2, 3, 4, 5, 6)
    assert entry.lambdas == tuple(QUALITY_LAMBDAS["mse"])
    bpp, quality = entry.metrics["bpp"], entry.metrics["psnr-rgb"]
    assert len(bpp) == len(quality) == 6 and min(quality) > 20
    assert bpp == sorted(bpp) and quality == sorted(quality)  # a higher quality spends more bits for more dB
    details = json.loads((weights_dir() / entry.details).read_text())
    assert details["training"]["step"] > 0
    # the recorded evaluation is a CompressAI-format result with real-bitstream numbers
    res = details["results"][0]["results"]
    assert res["bpp"] == entry.metrics["bpp"] and res["psnr-rgb"] == entry.metrics["psnr-rgb"]


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
    default = net.latent_codec.arithmetic  # the model's own scheme: w8 for both
    assert info["arithmetic"] == default == "fixed8"
    assert info["identity"] == identity_digest(net, SCHEMES[default])[:4].hex() and info["fixed_point"]
    assert info["overhead_bytes"] <= 32  # a shipped model's stream: short model code, implied shape
    assert cli.main(["decompress", str(stream), str(png)]) == 0
    rec = read_image(png)
    assert rec.shape == img.shape
    bpp = 8 * stream.stat().st_size / (img.shape[0] * img.shape[1])
    # coded at the top quality: an untrained small model is far below 18 dB, a trained one above it
    assert info["quality"] == 6 and 0.05 < bpp < 2.0 and psnr(rec, img) > 18.0, (bpp, psnr(rec, img))


@pytest.mark.slow
@pytest.mark.parametrize("key", SHIPPED)
def test_cli_quality_selects_the_rate_of_the_shipped_model(key, tmp_path, capsys):
    name, size = key.rsplit("-", 1)
    sizes = {}
    for q in ("1", "3.5", "6"):
        stream = tmp_path / f"q{q}.glic"
        assert cli.main(["compress", str(PHOTO), str(stream), "--model", name, "--size", size, "--quality", q]) == 0
        assert inspect_stream(stream.read_bytes())["quality"] == float(q)
        assert cli.main(["decompress", str(stream), str(tmp_path / f"q{q}.png")]) == 0
        sizes[q] = stream.stat().st_size
    capsys.readouterr()
    assert sizes["1"] < sizes["3.5"] < sizes["6"], sizes
