import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, features

from gnn_lic.evaluation.anchors import (
    available_codecs,
    decode_bytes,
    encode_pil,
    measure_anchors,
)
from gnn_lic.evaluation.images import load_images
from gnn_lic.evaluation.metrics import SmallImageWarning, psnr

QUALITIES = [15, 50, 90]


@pytest.fixture(scope="module")
def anchors(tiny_images):
    with pytest.warns(SmallImageWarning):
        return measure_anchors(tiny_images, codecs=("jpeg", "webp", "avif"), qualities=QUALITIES)


def test_codecs_measured(anchors):
    expected = {"jpeg", "webp"} | ({"avif"} if features.check("avif") else set())
    assert set(anchors) == expected == set(available_codecs())


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_rate_and_quality_are_real(anchors, tiny_images, codec):
    if codec not in anchors:
        pytest.skip(f"Pillow has no {codec} support")
    doc = anchors[codec]
    res = doc["results"]
    assert len(res["bpp"]) == 3 and res["quality"] == QUALITIES
    # bpp comes from the real encoded byte length, averaged over the two images
    for point, q in zip(doc["per_image"], res["quality"]):
        per_bpp = []
        for name, img in tiny_images:
            data = encode_pil(img, codec, q)
            h, w = img.shape[:2]
            assert point[name]["bytes"] == len(data)
            assert point[name]["bpp"] == pytest.approx(len(data) * 8 / (h * w))
            assert point[name]["psnr-rgb"] == pytest.approx(psnr(img, decode_bytes(data)))
            per_bpp.append(point[name]["bpp"])
        assert res["bpp"][res["quality"].index(q)] == pytest.approx(np.mean(per_bpp))
    assert np.all(np.diff(res["bpp"]) > 0)
    assert np.all(np.diff(res["psnr-rgb"]) > 0)  # PSNR increases with quality
    assert np.all(np.diff(res["ms-ssim-rgb"]) > 0)
    assert 20 < res["psnr-rgb"][0] < res["psnr-rgb"][-1] < 60
    assert all(0 < v < 1 for v in res["ms-ssim-rgb"])


def test_jpeg_is_444(tiny_images):
    data = encode_pil(tiny_images[0][1], "jpeg", 50)
    with Image.open(io.BytesIO(data)) as im:
        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4


def test_load_images_and_errors(tmp_path, tiny_images):
    for name, img in tiny_images:
        Image.fromarray(img).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    loaded = load_images(tmp_path)
    assert [n for n, _ in loaded] == ["astronaut.png", "chelsea.png"]
    np.testing.assert_array_equal(loaded[0][1], tiny_images[0][1])
    with pytest.raises(ValueError, match="unknown codec"):
        encode_pil(tiny_images[0][1], "bmp", 50)
    with pytest.raises(TypeError):
        encode_pil(tiny_images[0][1].astype(np.float32), "jpeg", 50)
