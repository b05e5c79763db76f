"""Fixtures for gnn_lic.evaluation tests."""

import json
from pathlib import Path

import numpy as np
import pytest


#: two reference curves of a "kodak" folder: "better" needs 20 % fewer bits for the same PSNR
_VTM = {"bpp": [0.1, 0.2, 0.4, 0.8], "psnr-rgb": [28.0, 30.0, 32.5, 35.0], "ms-ssim-rgb": [0.9, 0.93, 0.96, 0.98]}


@pytest.fixture
def kodak_reference_dir(tmp_path) -> Path:
    """A ``<shared>/reference/kodak`` folder of two literal curves and a ``_meta.json``."""
    folder = tmp_path / "shared" / "reference" / "kodak"
    folder.mkdir(parents=True)
    better = dict(_VTM, bpp=[0.8 * b for b in _VTM["bpp"]])
    for name, res in (("vtm", _VTM), ("better", better)):
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "results": res}))
    (folder / "_meta.json").write_text(json.dumps({"source": "test"}))
    return folder


@pytest.fixture(scope="session")
def tiny_images() -> list[tuple[str, np.ndarray]]:
    """Two natural 96x128 RGB crops from scikit-image's bundled images."""
    from skimage import data

    return [
        ("astronaut", np.ascontiguousarray(data.astronaut()[100:196, 150:278])),
        ("chelsea", np.ascontiguousarray(data.chelsea()[50:146, 100:228])),
    ]
