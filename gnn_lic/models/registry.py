"""Model registry: a plain dict filled by a decorator, as in CompressAI and timm."""

from __future__ import annotations

from typing import Callable, Dict, List

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "SIZES"]

SIZES = ("tiny", "small", "paper")

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Register ``fn(size=..., **kwargs) -> CompressionModel`` under ``name``."""

    def decorator(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return decorator


def list_models() -> List[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def create_model(name: str, size: str = "paper", pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a registered model.

    The returned module carries ``model_name``, ``model_size`` and ``model_config``
    (a JSON-able dict of everything needed to rebuild it), which the file codec hashes.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    net = _MODELS[name](size=size, **kwargs)
    net.model_name = name
    net.model_size = size
    net.model_config = {"name": name, "size": size, **kwargs}
    if pretrained:
        from gnn_lic.models.pretrained import load_pretrained  # noqa: PLC0415

        load_pretrained(net)
    return net
