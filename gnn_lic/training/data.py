"""Training and test images, and deterministic random crops.

**Built-in split.** Without ``--data-train`` / ``--data-test``, the images are the
natural photos that ship inside scikit-image's ``skimage/data`` folder (read from disk
with :func:`gnn_lic.codec.read_image`; nothing is downloaded):

* training (7 images): ``astronaut.png`` (512x512), ``hubble_deep_field.jpg``
  (1000x872), ``ihc.png`` (immunohistochemistry, 512x512), ``motorcycle_left.png`` and
  ``motorcycle_right.png`` (741x500), ``retina.jpg`` (1411x1411), ``rocket.jpg`` (640x427);
* test (2 images): ``chelsea.png`` (451x300) and ``coffee.png`` (600x400).

The two motorcycle images are a stereo pair of one scene, so they stay together on the
training side: holding one of them out would leak the test scene into training. The
test images are the two smallest photos, which keeps the evaluations of the main job
cheap. Graphics, textures and grey-level images (``color.png``, ``logo.png``,
``brick.png``, ``camera.png``, ...) are not used.

**Crops.** :class:`RandomCrops` draws the crops of step ``s`` from a
``torch.Generator`` seeded with ``(seed, s)`` only: the batch of a step never depends
on what ran before, so a resumed run sees exactly the crops of an uninterrupted one.
With ``world_size`` processes the global batch of ``batch_size * world_size`` crops is
drawn once and process ``rank`` takes crops ``rank, rank + world_size, ...``
(DistributedSampler-style sharding).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from gnn_lic.codec import read_image
from gnn_lic.codec.errors import ImageReadError

__all__ = [
    "SKIMAGE_TRAIN",
    "SKIMAGE_TEST",
    "IMAGE_EXTENSIONS",
    "DataError",
    "skimage_data_dir",
    "builtin_images",
    "load_image_folder",
    "load_images",
    "step_seed",
    "RandomCrops",
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

Image = Tuple[str, np.ndarray]


class DataError(ValueError):
    """A missing, empty or unreadable image folder; the message is one line."""


def skimage_data_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image."""
    try:
        import skimage.data  # noqa: PLC0415
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        raise DataError("scikit-image is not installed; pass --data-train/--data-test folders") from None
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
    """Every PNG/JPEG file of ``folder`` (sorted by name, not recursive) as ``(name, HxWx3 uint8)``."""
    p = Path(folder)
    if not p.exists():
        raise DataError(f"image folder '{p}' does not exist")
    if not p.is_dir():
        raise DataError(f"'{p}' is not a folder")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise DataError(f"image folder '{p}' holds no PNG or JPEG images")
    out = []
    for f in files:
        try:
            out.append((f.name, read_image(f)))
        except ImageReadError as exc:
            raise DataError(str(exc)) from None
    return out


def load_images(folder: Union[None, str, os.PathLike], split: str) -> List[Image]:
    """``load_image_folder(folder)``, or the built-in ``split`` when ``folder`` is None."""
    return builtin_images(split) if folder in (None, "") else load_image_folder(folder)


def step_seed(seed: int, step: int, *stream: int) -> int:
    """A 63-bit seed for ``(seed, step, *stream)``, independent of every other step.

    >>> step_seed(0, 1) != step_seed(0, 2) != step_seed(1, 1)
    True
    """
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), *map(int, stream)]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & (2**63 - 1)


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not (ph or pw):
        return img
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(img, pads, mode=mode)


class RandomCrops:
    """Random square crops of a list of images, reproducible per step.

    Args:
        images (sequence): ``HxWx3`` uint8 arrays or ``(name, array)`` pairs.
        patch_size (int): crop side; smaller images are padded (reflection) to it.
        flips (bool): random horizontal and vertical flips (probability 1/2 each).
        seed (int): base seed; the crops of step ``s`` depend on ``(seed, s)`` only.

    Each crop picks an image uniformly at random, then a uniform position in it.
    :meth:`batch` returns a float ``(B, 3, patch, patch)`` tensor in ``[0, 1]``.
    """

    def __init__(self, images: Sequence, patch_size: int, flips: bool = True, seed: int = 0):
        if not images:
            raise DataError("no training images")
        arrays = [im[1] if isinstance(im, tuple) else im for im in images]
        self.patch_size = int(patch_size)
        self.flips = bool(flips)
        self.seed = int(seed)
        self.images: List[Tensor] = []
        for a in arrays:
            a = np.asarray(a)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise DataError(f"expected HxWx3 uint8 images, got {a.dtype} {a.shape}")
            a = _pad_to(a, self.patch_size)
            self.images.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous())

    def __len__(self) -> int:
        return len(self.images)

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(step_seed(self.seed, step, 0))

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> Tensor:
        """The crops of process ``rank`` at ``step``: ``(batch_size, 3, p, p)`` floats in ``[0, 1]``."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        g = self.generator(step)
        n = batch_size * world_size
        p = self.patch_size
        # every random number of the global batch is drawn, in a fixed order, by every rank
        which = torch.randint(len(self.images), (n,), generator=g)
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)
        flip = torch.rand(n, 2, generator=g) < 0.5
        crops = []
        for i in range(rank, n, world_size):
            img = self.images[int(which[i])]
            H, W = img.shape[-2:]
            top = min(int(u[i, 0] * (H - p + 1)), H - p)
            left = min(int(u[i, 1] * (W - p + 1)), W - p)
            c = img[:, top : top + p, left : left + p]
            if self.flips:
                dims = [d for d, f in zip((2, 1), flip[i].tolist()) if f]
                if dims:
                    c = c.flip(dims)
            crops.append(c)
        return torch.stack(crops).float().div_(255.0)

    def __repr__(self) -> str:
        return (f"RandomCrops(images={len(self.images)}, patch_size={self.patch_size}, flips={self.flips}, "
                f"seed={self.seed})")
