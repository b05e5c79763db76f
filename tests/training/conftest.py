"""Fixtures for gnn_lic.training tests: tiny image folders and a tiny training config."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _write_crops(folder: Path, crops) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in crops:
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def image_dirs(tmp_path_factory):
    """``(train_dir, test_dir)``: three 96x96 training crops and two 64x80 test crops (PNG)."""
    from skimage import data

    root = tmp_path_factory.mktemp("images")
    astronaut, coffee, chelsea = data.astronaut(), data.coffee(), data.chelsea()
    train = _write_crops(root / "train", [("astronaut", astronaut[80:176, 150:246]),
                                          ("rocket", data.rocket()[100:196, 200:296]),
                                          ("coffee", coffee[150:246, 200:296])])
    test = _write_crops(root / "test", [("chelsea", chelsea[60:124, 120:200]), ("coffee", coffee[50:114, 300:380])])
    return train, test


@pytest.fixture
def tiny_config(tmp_path, image_dirs):
    """A TrainConfig for the tiny GLIC (wavelet branch on) on 64x64 crops, no progress bar."""
    from gnn_lic.training import TrainConfig

    train_dir, test_dir = image_dirs
    return TrainConfig(model="glic", size="tiny", lmbda=0.01, steps=4, batch_size=2, patch_size=64,
                       data_train=str(train_dir), data_test=str(test_dir), run_dir=str(tmp_path / "run"),
                       out=str(tmp_path), progress=False, threads=1)
