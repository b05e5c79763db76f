import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gnn_lic.evaluation.evaluate import evaluate_model, evaluate_models
from gnn_lic.evaluation.images import image_to_tensor
from gnn_lic.evaluation.metrics import SmallImageWarning, psnr


def _factorized(seed=0):
    from compressai.models import FactorizedPrior

    torch.manual_seed(seed)
    return FactorizedPrior(N=8, M=8).eval()


@pytest.fixture(scope="module")
def image64():
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[200:264, 180:244])


def test_entropy_estimation_matches_manual(image64):
    net = _factorized()
    with pytest.warns(SmallImageWarning):
        res = evaluate_model(net, [("crop", image64)], entropy_estimation=True)
    with torch.no_grad():
        out = net(image_to_tensor(image64))
    bits = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values())
    rec = (out["x_hat"].clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert res["mode"] == "entropy-estimation" and res["n_images"] == 1
    assert res["bpp"] == pytest.approx(bits / (64 * 64), rel=1e-9)
    assert res["bpp"] > 0
    assert res["psnr-rgb"] == pytest.approx(psnr(image64, rec), rel=1e-9)
    assert 0 < res["ms-ssim-rgb"] <= 1
    assert res["ms-ssim-db"] == pytest.approx(-10 * math.log10(1 - res["ms-ssim-rgb"]))
    assert res["per_image"]["crop"]["bpp"] == res["bpp"]
    assert not net.training


def test_entropy_estimation_pads_odd_sizes(image64):
    net = _factorized()
    img = np.ascontiguousarray(image64[:50, :37])
    with pytest.warns(SmallImageWarning):
        res = evaluate_model(net, [("odd", img)], entropy_estimation=True)
    assert res["per_image"]["odd"]["bpp"] > 0 and math.isfinite(res["psnr-rgb"])


def _jpeg_codec():
    """A stand-in file codec (Pillow JPEG, quality 60) for the real-bitstream path."""

    def encode(net, img):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=60)
        return buf.getvalue()

    def decode(net, data):
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    return encode, decode


def test_bitstream_mode_with_injected_codec(image64):
    net = _factorized()
    enc, dec = _jpeg_codec()
    imgs = [("a", image64), ("b", np.ascontiguousarray(image64[::-1]))]
    with pytest.warns(SmallImageWarning):
        res = evaluate_model(net, imgs, codec=(enc, dec))
    assert res["mode"] == "bitstream"
    for name, img in imgs:
        data = enc(net, img)
        row = res["per_image"][name]
        assert row["bytes"] == len(data)
        assert row["bpp"] == pytest.approx(len(data) * 8 / (64 * 64))
        assert row["psnr-rgb"] == pytest.approx(psnr(img, dec(net, data)))
    assert res["bpp"] == pytest.approx(np.mean([r["bpp"] for r in res["per_image"].values()]))
    assert res["decoding_time"] >= 0


def test_evaluate_models_builds_results(image64):
    enc, dec = _jpeg_codec()
    nets = [(q, _factorized(q)) for q in (1, 2)]
    with pytest.warns(SmallImageWarning):
        doc = evaluate_models(nets, [("a", image64)], name="fp", entropy_estimation=True)
    r = doc["results"]
    assert doc["name"] == "fp" and len(r["bpp"]) == 2 and r["bpp"] == sorted(r["bpp"])
    assert sorted(r["label"]) == [1, 2] and len(doc["per_image"]) == 2


def test_bitstream_mode_with_gnn_lic_codec(image64):
    from gnn_lic import codec
    net = _factorized()
    net.model_name, net.model_size = "factorized-test", "tiny"
    net.model_config = {"name": "factorized-test", "size": "tiny", "N": 8, "M": 8}
    net.update(force=True)
    with pytest.warns(SmallImageWarning):
        res = evaluate_model(net, [("crop", image64)])
    data = codec.encode_image(net, image64)
    rec = codec.decode_image(net, data)
    row = res["per_image"]["crop"]
    assert row["bytes"] == len(data)  # real file size, header included
    assert row["bpp"] == pytest.approx(len(data) * 8 / (64 * 64))
    assert row["psnr-rgb"] == pytest.approx(psnr(image64, rec))
    # the real bitstream costs at least the estimated rate (plus header bytes)
    with pytest.warns(SmallImageWarning):
        est = evaluate_model(net, [("crop", image64)], entropy_estimation=True)
    assert row["bpp"] > est["bpp"]
    assert row["psnr-rgb"] == pytest.approx(est["psnr-rgb"], abs=0.5)


def test_image_to_tensor_is_contiguous_nchw():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = image_to_tensor(image)
    assert t.shape == (1, 3, 5, 7) and t.dtype == torch.float32 and t.is_contiguous()
    assert t.stride() == (105, 35, 7, 1)
    torch.testing.assert_close(t[0].permute(1, 2, 0), torch.from_numpy(image).float() / 255, rtol=0, atol=0)
