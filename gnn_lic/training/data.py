"""Deterministic random crops of the training images.

The image sets themselves (folders and the built-in scikit-image split) are read by
:mod:`gnn_lic.evaluation.images`.

**Crops.** :class:`RandomCrops` draws the crops of step ``s`` from a
``torch.Generator`` seeded with ``(seed, s)`` only: the batch of a step never depends
on what ran before, so a resumed run sees exactly the crops of an uninterrupted one.
With ``world_size`` processes the global batch of ``batch_size * world_size`` crops is
drawn once and process ``rank`` takes crops ``rank, rank + world_size, ...``
(DistributedSampler-style sharding).
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor

from gnn_lic.evaluation.images import DataError

__all__ = ["step_seed", "RandomCrops"]


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
