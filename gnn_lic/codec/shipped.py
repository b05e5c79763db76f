"""The shipped model for a name and size, or for a stream: what ``compress``/``decompress`` build
without ``--checkpoint``.

``pretrained_model(name, size, quality)`` is ``create_model(..., pretrained=True)`` with every
check done before anything is built; ``pretrained_for_stream(data)`` finds the shipped weights a
``.glic`` stream was encoded with from its header (model, size and, where several qualities are
shipped, the model identity the stream carries). Both take a ``cache`` dict so that a job of many
files builds each model once.
"""

from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from gnn_lic.codec.container import parse_stream
from gnn_lic.codec.image_codec import check_model_matches
from gnn_lic.errors import ModelMismatchError, NoPretrainedWeightsError
from gnn_lic.models import SIZES, create_model, list_models
from gnn_lic.models.zoo import find_weights, shipped_weights

__all__ = ["pretrained_model", "pretrained_for_stream"]


def pretrained_model(name: str, size: str, quality: Optional[float] = None,
                     cache: Optional[Dict] = None) -> nn.Module:
    """``create_model(name, size=size, pretrained=True, quality=quality)``, after checking that the
    name, the size and the quality are known and shipped (:class:`NoPretrainedWeightsError`, one line,
    otherwise); with ``cache``, a model built before for the same arguments is returned again."""
    key = (name, size, quality)
    if cache is not None and key in cache:
        return cache[key]
    if name not in list_models():
        raise NoPretrainedWeightsError(
            f"unknown model '{name}'; choose one of: {', '.join(list_models()) or '(none registered)'}")
    if size not in SIZES:
        raise NoPretrainedWeightsError(f"unknown size '{size}'; choose one of: {', '.join(SIZES)}")
    try:
        find_weights(name, size, quality)
    except ValueError as exc:
        raise NoPretrainedWeightsError(f"--quality: {exc}") from None
    net = create_model(name, size=size, pretrained=True, quality=quality)
    if cache is not None:
        cache[key] = net
    return net


def pretrained_for_stream(data: bytes, quality: Optional[float] = None, cache: Optional[Dict] = None) -> nn.Module:
    """The shipped model the stream ``data`` was encoded with: the weights of ``quality`` if given, the
    only ones shipped for the stream's model and size, or, where several are, those whose identity the
    stream carries (:class:`~gnn_lic.errors.ModelMismatchError` if none does)."""
    parsed = parse_stream(data)
    name, size = parsed.model_name, parsed.model_size
    qualities = sorted({e.qualities[0] for e in shipped_weights(name, size)})
    if quality is not None or len(qualities) < 2:
        return pretrained_model(name, size, quality if quality is not None else next(iter(qualities), None), cache)
    mismatch = None
    for q in qualities:
        net = pretrained_model(name, size, q, cache)
        try:
            check_model_matches(net, parsed)
            return net
        except ModelMismatchError as exc:
            mismatch = exc
    raise mismatch
