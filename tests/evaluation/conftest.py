"""Fixtures for gnn_lic.evaluation tests."""

import os
from pathlib import Path

import numpy as np
import pytest


def _shared_dir() -> Path | None:
    env = os.environ.get("GNN_LIC_SHARED")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared"
    return p.resolve() if p.is_dir() else None


@pytest.fixture
def kodak_reference_dir() -> Path:
    """``shared/reference/kodak`` or a skip when shared/ is not beside the repository."""
    shared = _shared_dir()
    if shared is None or not (shared / "reference" / "kodak").is_dir():
        pytest.skip(
            "shared/reference/kodak not found (expected at <repo>/../shared or $GNN_LIC_SHARED)"
        )
    return shared / "reference" / "kodak"


@pytest.fixture(scope="session")
def tiny_images() -> list[tuple[str, np.ndarray]]:
    """Two natural 96x128 RGB crops from scikit-image's bundled images."""
    from skimage import data

    return [
        ("astronaut", np.ascontiguousarray(data.astronaut()[100:196, 150:278])),
        ("chelsea", np.ascontiguousarray(data.chelsea()[50:146, 100:228])),
    ]
