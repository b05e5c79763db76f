"""Every registered gnn_lic model round-trips a real photo through the command line.

Uses scikit-image's built-in ``coffee.png`` (600x400); ``tiny`` sizes with seeded weights
saved as checkpoints.
"""


import numpy as np
import pytest
import torch

import gnn_lic.__main__ as cli
from gnn_lic.codec import decode_image, encode_image, read_image
from gnn_lic.evaluation.metrics import psnr
from gnn_lic.models import create_model, list_models
from gnn_lic.models.checkpoint import save_checkpoint
from gnn_lic.evaluation.images import skimage_data_dir
from gnn_lic.models.entropy import entropy_arithmetic

PHOTO = skimage_data_dir() / "coffee.png"
OWN = list_models()  # stand-in models live in scoped registries (tests/conftest.py)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    src = PHOTO
    return src, read_image(src)


@pytest.mark.slow
@pytest.mark.parametrize("name", OWN)
def test_cli_roundtrip_every_model(name, photo, tmp_path, capsys):
    src, img = photo
    torch.manual_seed(0)
    net = create_model(name, size="tiny")
    ckpt = save_checkpoint(tmp_path / f"{name}.pt", net)
    stream, png = tmp_path / "x.glic", tmp_path / "x.png"
    assert cli.main(["compress", str(src), str(stream), "--checkpoint", str(ckpt)]) == 0
    out = capsys.readouterr().out
    bpp = 8 * stream.stat().st_size / (img.shape[0] * img.shape[1])
    assert f"{bpp:.4f}" in out  # bpp printed from the real file size
    assert cli.main(["decompress", str(stream), str(png), "--checkpoint", str(ckpt)]) == 0
    rec = read_image(png)
    assert rec.shape == img.shape and rec.dtype == np.uint8
    # the command line decodes exactly what the library decodes from the same bytes
    net.update(force=True)
    assert np.array_equal(rec, decode_image(net.eval(), stream.read_bytes()))
    # and the codec's plumbing (padding, crop, channel order) gives the model's own eval
    # reconstruction, up to latents whose rounding differs between the forward pass and the
    # coding path; in a graph model such a flip can also flip graph edges downstream, so
    # compare by PSNR: a wrong crop, padding or channel order gives ~10-15 dB, a correct
    # codec 59-91 dB here (kodim23, tiny models). The float entropy path is used: in these
    # untrained models the fixed-point means (within 2**-16 of the float ones) flip a few
    # roundings, and the random context networks spread them to later groups
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        ref = net.eval()(x)["x_hat"].clamp(0, 1)
    ref8 = (ref[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    with entropy_arithmetic(net, "float"):
        rec_float = decode_image(net, encode_image(net, img))
    assert psnr(rec_float, ref8) > 30.0, psnr(rec_float, ref8)  # inf when identical
    assert psnr(rec, ref8) > 20.0, psnr(rec, ref8)  # the fixed-point stream: same plumbing
