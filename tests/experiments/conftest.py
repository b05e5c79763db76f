"""Fixtures for experiments/run.py tests: gpu_check.py as a module and tiny image folders
(``run_script`` and ``experiment_script`` are in tests/conftest.py)."""

import os

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def gpu_check(experiment_script):
    """``experiments/gpu_check.py`` as a module."""
    return experiment_script("gpu_check")


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory):
    """``(train_dir, test_dir)``: two 96x96 training crops and one 64x80 test crop (PNG)."""
    from skimage import data

    root = tmp_path_factory.mktemp("run-images")
    train, test = root / "train", root / "test"
    train.mkdir()
    test.mkdir()
    Image.fromarray(np.ascontiguousarray(data.astronaut()[80:176, 150:246])).save(train / "astronaut.png")
    Image.fromarray(np.ascontiguousarray(data.rocket()[100:196, 200:296])).save(train / "rocket.png")
    Image.fromarray(np.ascontiguousarray(data.chelsea()[60:124, 120:200])).save(test / "chelsea.png")
    return train, test


@pytest.fixture
def tiny_args(tmp_path, data_dirs):
    """Arguments of a 2-step, 1-lambda job of the tiny GLIC on the tiny folders."""
    train, test = data_dirs
    return ["--model", "glic", "--size", "tiny", "--steps", "2", "--batch-size", "2", "--patch-size", "64",
            "--lambdas", "0.01", "--data-train", str(train), "--data-test", str(test), "--out", str(tmp_path / "runs"),
            "--no-progress", "--threads", "1"]


@pytest.fixture
def job_env():
    """Environment for an ``experiments/run.py`` subprocess: 1 thread, no inherited torchrun variables."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env
