"""Image folders and the built-in image split: the one reader of image sets.

Every image is read by :func:`gnn_lic.codec.read_image` (8-bit RGB; 16-bit and other
modes converted as it documents), so training, evaluation, anchors and analysis see the
same pixels for the same file.

**Built-in split.** Without a folder, the images are the natural photos that ship inside
scikit-image's ``skimage/data`` folder (read from disk; nothing is downloaded):

* training (7 images): ``astronaut.png`` (512x512), ``hubble_deep_field.jpg``
  (1000x872), ``ihc.png`` (immunohistochemistry, 512x512), ``motorcycle_left.png`` and
  ``motorcycle_right.png`` (741x500), ``retina.jpg`` (1411x1411), ``rocket.jpg`` (640x427);
* test (2 images): ``chelsea.png`` (451x300) and ``coffee.png`` (600x400).

The two motorcycle images are a stereo pair of one scene, so they stay together on the
training side: holding one of them out would leak the test scene into training. The
test images are the two smallest photos, which keeps the evaluations of the main job
cheap. Graphics, textures and grey-level images (``color.png``, ``logo.png``,
``brick.png``, ``camera.png``, ...) are not used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import skimage.data
import torch

from gnn_lic.codec import read_image
from gnn_lic.errors import ImageReadError

__all__ = [
    "SKIMAGE_TRAIN",
    "SKIMAGE_TEST",
    "IMAGE_EXTENSIONS",
    "DataError",
    "skimage_data_dir",
    "builtin_images",
    "load_image_folder",
    "load_images",
    "image_to_tensor",
]

SKIMAGE_TRAIN: Tuple[str, ...] = (
    "astronaut.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)
SKIMAGE_TEST: Tuple[str, ...] = ("chelsea.png", "coffee.png")

#: file name endings read from a folder (any other file is ignored)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".webp")

Image = Tuple[str, np.ndarray]


class DataError(ValueError):
    """A missing, empty or unreadable image folder; the message is one line."""


def skimage_data_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image."""
    return Path(os.path.dirname(skimage.data.__file__))


def _silent(_msg: str) -> None:
    pass


def builtin_images(split: str = "train") -> List[Image]:
    """The built-in ``train`` or ``test`` images as ``(file name, HxWx3 uint8)``."""
    names = {"train": SKIMAGE_TRAIN, "test": SKIMAGE_TEST}.get(split)
    if names is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = skimage_data_dir()
    out = []
    for name in names:
        try:
            out.append((name, read_image(folder / name, notify=_silent)))
        except ImageReadError as exc:
            raise DataError(f"built-in image {name} of scikit-image is not readable: {exc}") from None
    return out


def load_image_folder(folder: Union[str, os.PathLike], limit: Optional[int] = None) -> List[Image]:
    """Every image file of ``folder`` (sorted by name, not recursive) as ``(name, HxWx3 uint8)``."""
    p = Path(folder)
    if not p.exists():
        raise DataError(f"image folder '{p}' does not exist")
    if not p.is_dir():
        raise DataError(f"'{p}' is not a folder")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise DataError(f"image folder '{p}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    out = []
    for f in files:
        try:
            out.append((f.name, read_image(f)))
        except ImageReadError as exc:
            raise DataError(str(exc)) from None
    return out


def load_images(folder: Union[None, str, os.PathLike] = None, split: str = "test",
                limit: Optional[int] = None) -> List[Image]:
    """``load_image_folder(folder, limit)``, or the built-in ``split`` when ``folder`` is None."""
    if folder in (None, ""):
        images = builtin_images(split)
        return images if limit is None else images[:limit]
    return load_image_folder(folder, limit)


def image_to_tensor(image: np.ndarray, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """``HxWx3`` uint8 -> float ``(1, 3, H, W)`` in ``[0, 1]`` (the model input of an image), contiguous
    (NCHW, as torchvision's ``ToTensor`` gives it)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(np.array(arr.transpose(2, 0, 1), copy=True, order="C"))[None]
    return t.to(device).float().div(255.0)
