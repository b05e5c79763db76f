"""Model registry: a plain dict of builders filled by a decorator, as in CompressAI and timm.

The registry knows nothing of weights. Three modules sit on it, each importing only the
ones below (as timm splits ``_registry``, ``_builder`` and ``_factory``):

* :mod:`gnn_lic.models.checkpoint` rebuilds a saved model from its configuration here;
* :mod:`gnn_lic.models.zoo` finds, checks and loads shipped weights into a built model;
* :mod:`gnn_lic.models.factory` holds :func:`~gnn_lic.models.factory.create_model`, which
  builds from here and, with ``pretrained=True``, asks the zoo.

A built model carries ``model_name``, ``model_size`` and ``model_config`` (a JSON-able
dict of everything needed to rebuild it); :func:`canonical_config_json` is the one byte
form of that configuration, which checkpoints, the zoo and the file codec compare and hash.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch.nn as nn

from gnn_lic.errors import CodecError

__all__ = ["register_model", "registered_models", "build_registered", "canonical_config_json", "upgrade_config",
           "SIZES"]

SIZES = ("tiny", "small", "paper")

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
#: name -> {checkpoint version: {size: {key: value}}}: preset values that changed after that version
_EARLIER_PRESETS: Dict[str, Dict[int, Dict[str, Dict[str, Any]]]] = {}


def register_model(name: str, earlier_presets: Optional[Mapping[int, Mapping[str, Mapping[str, Any]]]] = None):
    """Register ``fn(size=..., **kwargs) -> CompressionModel`` under ``name``.

    ``earlier_presets`` records preset changes, so configurations saved before them still build
    the model they describe: ``{v: {size: {key: value}}}`` says that a checkpoint of version ``v``
    or earlier that does not spell out ``key`` meant ``value`` (see :func:`upgrade_config`).
    """

    def decorator(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        if earlier_presets:
            _EARLIER_PRESETS[name] = {int(v): {s: dict(o) for s, o in sizes.items()}
                                      for v, sizes in earlier_presets.items()}
        return fn

    return decorator


def upgrade_config(config: Mapping[str, Any], version: int) -> Dict[str, Any]:
    """``config`` as a checkpoint of format ``version`` recorded it, with every preset value
    that changed since then spelled out, so it rebuilds the same model with today's presets.

    >>> upgrade_config({"name": "glic", "size": "small"}, 1)
    {'name': 'glic', 'size': 'small', 'wavelet': False}
    """
    out = dict(config)
    changes = _EARLIER_PRESETS.get(out.get("name"), {})
    for since in sorted(changes):
        if version <= since:
            for key, value in changes[since].get(out.get("size"), {}).items():
                out.setdefault(key, value)
    return out


def registered_models() -> List[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODELS)


def build_registered(name: str, size: str = "paper", **kwargs: Any) -> nn.Module:
    """Build registered model ``name`` at ``size`` (random weights) and stamp its configuration.

    Raises ``ValueError`` for an unknown name or size.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(registered_models())}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    net = _MODELS[name](size=size, **kwargs)
    net.model_name = name
    net.model_size = size
    net.model_config = {"name": name, "size": size, **kwargs}
    return net


def canonical_config_json(net_or_config: Any) -> bytes:
    """Canonical JSON bytes of a model's ``model_config`` (or of a config dict).

    Keys sorted, no whitespace, ASCII only, NaN/inf refused: equal configurations give
    equal bytes, so they can be compared and hashed.
    """
    cfg = net_or_config if isinstance(net_or_config, dict) else getattr(net_or_config, "model_config", None)
    if not isinstance(cfg, dict):
        raise CodecError(
            "the model has no 'model_config' dict; build it with gnn_lic.models.create_model "
            "or load it with gnn_lic.models.checkpoint.load_checkpoint"
        )
    try:
        text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"model_config is not JSON-serialisable: {exc}") from None
    return text.encode("ascii")
