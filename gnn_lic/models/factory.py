"""``create_model`` and ``list_models``: the registry, plus shipped weights on request (timm's factory)."""

from __future__ import annotations

from typing import Any, List, Optional

import torch.nn as nn

from gnn_lic.models.registry import build_registered, registered_models
from gnn_lic.models.zoo import find_weights, load_pretrained, shipped_weights

__all__ = ["create_model", "list_models"]


def list_models(pretrained: bool = False) -> List[str]:
    """Names of every registered model, sorted; with ``pretrained``, only those with shipped weights."""
    names = registered_models()
    if not pretrained:
        return names
    shipped = {e.name for e in shipped_weights()}
    return [n for n in names if n in shipped]


def create_model(name: str, size: str = "paper", pretrained: bool = False, quality: Optional[float] = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model; with ``pretrained``, load its shipped weights at ``quality``.

    The returned module carries ``model_name``, ``model_size`` and ``model_config``
    (a JSON-able dict of everything needed to rebuild it), which the file codec hashes.
    ``quality`` (1 = lowest rate, :data:`gnn_lic.models.zoo.QUALITY_LAMBDAS`) chooses among
    the shipped weights of ``name``/``size`` and may be left out when only one is shipped;
    it means nothing without ``pretrained``. A shipped variable-rate model
    (:mod:`gnn_lic.models.variable_rate`) serves every quality between its lowest and
    highest, real numbers included; ``quality`` becomes its ``default_quality``. Loaded models are in eval mode.
    """
    if quality is not None and not pretrained:
        raise ValueError("quality selects shipped weights: pass pretrained=True with it")
    if pretrained:  # a variable-rate checkpoint is built with its trade-offs
        entry, served = find_weights(name, size, quality)
        kwargs = {**entry.model_kwargs, **kwargs}
    net = build_registered(name, size=size, **kwargs)
    if pretrained:
        load_pretrained(net, quality)
        if entry.variable_rate and served is not None:
            net.default_quality = float(served)  # what compress codes at when given no quality
    return net
