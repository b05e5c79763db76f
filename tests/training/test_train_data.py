"""Built-in split, image folders and deterministic crops."""

import numpy as np
import pytest
import torch
from PIL import Image

from gnn_lic.training import SKIMAGE_TEST, SKIMAGE_TRAIN, DataError, RandomCrops, builtin_images, load_image_folder
from gnn_lic.evaluation.images import skimage_data_dir
from gnn_lic.training.data import step_seed


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(70, 90), (100, 64), (40, 30)]]


def test_builtin_split_is_disjoint_and_local():
    assert not set(SKIMAGE_TRAIN) & set(SKIMAGE_TEST)
    # the stereo pair stays on one side of the split
    assert {"motorcycle_left.png", "motorcycle_right.png"} <= set(SKIMAGE_TRAIN)
    folder = skimage_data_dir()
    for name in SKIMAGE_TRAIN + SKIMAGE_TEST:
        assert (folder / name).is_file(), name  # shipped with scikit-image: no download
    test = builtin_images("test")
    assert [n for n, _ in test] == list(SKIMAGE_TEST)
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 256 for _, a in test)
    with pytest.raises(ValueError):
        builtin_images("val")


def test_crops_are_deterministic_by_seed_and_step():
    crops = RandomCrops(_images(), patch_size=32, seed=7)
    later = crops.batch(5, 4)
    first = crops.batch(3, 4)
    again = RandomCrops(_images(), patch_size=32, seed=7)
    assert torch.equal(again.batch(3, 4), first)  # no dependence on what ran before
    assert torch.equal(again.batch(5, 4), later)
    assert not torch.equal(first, later)
    assert not torch.equal(RandomCrops(_images(), patch_size=32, seed=8).batch(3, 4), first)
    assert first.shape == (4, 3, 32, 32) and first.dtype == torch.float32
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0


def test_crops_are_sharded_by_rank():
    crops = RandomCrops(_images(), patch_size=24, seed=1)
    full = crops.batch(2, 6)  # world of 1, global batch 6
    r0, r1 = crops.batch(2, 3, rank=0, world_size=2), crops.batch(2, 3, rank=1, world_size=2)
    assert torch.equal(full[0::2], r0) and torch.equal(full[1::2], r1)
    with pytest.raises(ValueError):
        crops.batch(0, 1, rank=2, world_size=2)


def test_crops_come_from_the_images_and_small_images_are_padded():
    img = np.arange(20 * 30 * 3, dtype=np.int64).reshape(20, 30, 3).astype(np.uint8)
    crops = RandomCrops([("small", img)], patch_size=48, flips=False, seed=0)
    assert crops.images[0].shape == (3, 48, 48)
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    c = RandomCrops([big], patch_size=16, flips=False, seed=3).batch(0, 1)[0]
    u8 = (c * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    found = any(np.array_equal(big[t:t + 16, s:s + 16], u8) for t in range(49) for s in range(49))
    assert found
    flipped = RandomCrops([big], patch_size=64, flips=True, seed=0)
    seen = {tuple(flipped.batch(s, 1)[0, 0, 0, :2].tolist()) for s in range(12)}
    assert len(seen) > 1  # flips change the crop of a full-size image


def test_step_seed_streams_differ():
    seeds = {step_seed(0, s, k) for s in range(50) for k in range(3)}
    assert len(seeds) == 150 and all(0 <= x < 2**63 for x in seeds)


def test_load_image_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.full((10, 6), 128, np.uint8)).save(tmp_path / "a.jpg")  # grey JPEG -> RGB
    images = load_image_folder(tmp_path)
    assert [n for n, _ in images] == ["a.jpg", "b.png"]
    assert images[0][1].shape == (10, 6, 3) and images[1][1].shape == (8, 9, 3)
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="c.png"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError):
        RandomCrops([], 16)
