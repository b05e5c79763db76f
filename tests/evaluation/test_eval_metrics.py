import math
import warnings

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as ref_ms_ssim

from gnn_lic.evaluation.metrics import (
    MS_SSIM_MIN_SIZE,
    SmallImageWarning,
    _reflect_index,
    bpp,
    ms_ssim,
    ms_ssim_db,
    psnr,
    to_uint8_array,
)


def test_psnr_known_value_and_layouts():
    a = np.zeros((8, 10, 3), np.uint8)
    b = np.full((8, 10, 3), 10, np.uint8)
    expected = 10 * math.log10(255**2 / 100.0)
    assert psnr(a, b) == pytest.approx(expected, abs=1e-12)
    # torch channel-first gives the same value
    ta = torch.from_numpy(a).permute(2, 0, 1)
    tb = torch.from_numpy(b).permute(2, 0, 1)
    assert psnr(ta, tb) == pytest.approx(expected, abs=1e-12)
    # float tensors on the [0, 1] scale with data_range=1
    assert psnr(ta.float() / 255, tb.float() / 255, data_range=1) == pytest.approx(expected, abs=1e-5)
    assert psnr(a, a) == math.inf


def test_psnr_uses_all_channels():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[..., 0] = 30  # one channel off by 30 -> mse = 900 / 3 = 300
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 300.0))


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))


def test_ms_ssim_large_matches_pytorch_msssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (170, 180, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float()
    expected = float(ref_ms_ssim(ta, tb, data_range=255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no small-image warning for >= 161 px
        got = ms_ssim(a, b)
    assert got == pytest.approx(expected, abs=1e-6)
    assert 0 < got < 1
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_small_image_policies(tiny_images):
    img = tiny_images[0][1]
    noisy = np.clip(img.astype(int) + 12, 0, 255).astype(np.uint8)
    with pytest.warns(SmallImageWarning):
        v = ms_ssim(img, noisy)  # default: mirror padding
    assert 0.5 < v < 1.0
    with pytest.warns(SmallImageWarning):
        assert ms_ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    with pytest.warns(SmallImageWarning):
        assert math.isnan(ms_ssim(img, noisy, small="nan"))
    with pytest.raises(ValueError, match="smaller than"):
        ms_ssim(img, noisy, small="raise")
    with pytest.raises(ValueError, match="small must be"):
        ms_ssim(img, noisy, small="bogus")
    # a very small image (padding larger than the image) still works
    with pytest.warns(SmallImageWarning):
        v2 = ms_ssim(img[:20, :30], noisy[:20, :30])
    assert 0 < v2 < 1


def test_reflect_index_matches_numpy_symmetric():
    for n, before, after in [(5, 2, 3), (4, 9, 11), (1, 3, 2), (96, 32, 33)]:
        idx = _reflect_index(n, before, after).numpy()
        expected = np.pad(np.arange(n), (before, after), mode="symmetric")
        np.testing.assert_array_equal(idx, expected)
    assert MS_SSIM_MIN_SIZE == 161


def test_ms_ssim_db_and_bpp():
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    np.testing.assert_allclose(ms_ssim_db([0.9, 0.999]), [10.0, 30.0])
    assert ms_ssim_db(1.0) == math.inf
    assert bpp(1000, 100, 80) == pytest.approx(1.0)
    assert bpp(3, 2, 3) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        bpp(10, 0, 5)


def test_to_uint8_array_rounds_and_clips():
    t = torch.tensor([[[0.0, 0.5]], [[1.0, 1.2]], [[-0.1, 0.002]]])  # 3x1x2
    arr = to_uint8_array(t, data_range=1.0)
    assert arr.shape == (1, 2, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr[0, 0], [0, 255, 0])
    np.testing.assert_array_equal(arr[0, 1], [128, 255, 1])
