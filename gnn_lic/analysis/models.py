"""Models and images for the analysis notebooks."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from gnn_lic.evaluation.images import image_to_tensor, load_images
from gnn_lic.models import create_model
from gnn_lic.models.zoo import shipped_weights

__all__ = ["load_analysis_models", "analysis_images"]


def load_analysis_models(
    names: Sequence[str], size: str = "small", seed: int = 0, pretrained: bool = True, quality: Optional[int] = None
) -> Dict[str, Tuple[nn.Module, bool]]:
    """``{name: (model, trained)}`` in eval mode.

    With ``pretrained``, a model with shipped weights (:func:`gnn_lic.models.zoo.shipped_weights`)
    loads them at ``quality``, which may be left out where one quality is shipped (``trained=True``);
    the others (all of them without ``pretrained``) are built from seed ``seed`` (the same
    initial weights every time, ``trained=False``), so that an analysis of untrained
    models is reproducible and is labelled as such.
    """
    out = {}
    for name in names:
        if pretrained and shipped_weights(name, size):
            out[name] = (create_model(name, size=size, pretrained=True, quality=quality).eval(), True)
            continue
        torch.manual_seed(seed)
        out[name] = (create_model(name, size=size).eval(), False)
    return out


def analysis_images(
    folder: Union[None, str, os.PathLike] = None, split: str = "test", limit: Optional[int] = None
) -> List[Tuple[str, Tensor]]:
    """``[(name, (1, 3, H, W) tensor)]``: a folder of images (e.g. Kodak), or the built-in
    scikit-image photos of ``split`` (``"test"``, ``"train"`` or ``"all"``) when ``folder`` is None."""
    if folder in (None, ""):
        splits = ("train", "test") if split == "all" else (split,)
        items = [im for s in splits for im in load_images(None, s)]
    else:
        items = load_images(folder, split)
    if limit is not None:
        items = items[:limit]
    return [(name, image_to_tensor(arr)) for name, arr in items]
