"""Hashes that identify a model: its configuration and its exact weights.

``config_hash(net)``
    sha256 of the canonical JSON of ``net.model_config``
    (:func:`gnn_lic.models.registry.canonical_config_json`: keys sorted, no whitespace,
    ASCII only, NaN/inf rejected).

``model_fingerprint(net)``
    sha256 over, in this order: the tag ``b"gnn_lic-fingerprint-v1\\0"``, the canonical
    configuration JSON, then for every entry of ``net.state_dict()`` (parameters and
    persistent buffers, including the entropy coders' CDF tables) in sorted key order: the
    key, the dtype name, the shape and the raw little-endian bytes of the tensor, each
    piece preceded by its length as an 8-byte big-endian integer so that the encoding is
    unambiguous.  It does not depend on the device the tensors live on, nor on the
    process; it changes when any weight changes.  Because the CDF tables are persistent
    buffers, the fingerprint of a model is only meaningful after ``net.update(force=True)``
    (which :func:`gnn_lic.models.checkpoint.load_checkpoint` always calls).

``identity_digest(net, entropy)``
    the same construction with the tag ``b"gnn_lic-identity-v2\0"`` over
    :func:`identity_config` instead of ``model_config``: the *fully resolved*
    configuration (the model class and every constructor argument after presets and
    defaults, graph hyper-parameters included, recorded by
    :class:`~gnn_lic.models.base.PaddedCompressionModel`) and the entropy arithmetic
    (``"float"`` or the fixed-point scheme name). Format-2 streams store its first bytes.

Hashing a large model costs a fraction of a second, so the result is cached per model
object and reused only while every state tensor is the very same tensor (same storage
pointer, shape, stride, dtype, device) with the same in-place version counter and the
configuration JSON is unchanged; inference tensors (which have no version counter)
disable the cache.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import weakref
from typing import Any, Dict, Optional, Tuple

import torch

from gnn_lic.errors import CodecError
from gnn_lic.models.registry import canonical_config_json

__all__ = ["config_hash", "model_fingerprint", "identity_config", "identity_digest"]

_TAG = b"gnn_lic-fingerprint-v1\0"
_IDENTITY_TAG = b"gnn_lic-identity-v2\0"
_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, Dict[bytes, Tuple[bytes, tuple, str]]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def config_hash(net_or_config: Any) -> str:
    """sha256 hex digest of :func:`canonical_config_json`."""
    return hashlib.sha256(canonical_config_json(net_or_config)).hexdigest()


def _put(h: "hashlib._Hash", piece: bytes) -> None:
    h.update(struct.pack(">Q", len(piece)))
    h.update(piece)


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.is_quantized or t.is_sparse or t.layout != torch.strided:
        raise CodecError(f"cannot fingerprint a tensor with layout {t.layout}")
    flat = t.to("cpu").contiguous().reshape(-1)
    if flat.is_conj():
        flat = flat.resolve_conj()
    if flat.is_neg():
        flat = flat.resolve_neg()
    return memoryview(flat.view(torch.uint8).numpy())


def _cache_key(state: dict) -> Any:
    """A key that changes whenever a state tensor is replaced or modified in place.

    Returns None when the state cannot be cached (inference tensors, non-tensors).
    The detached tensors themselves are kept in the key so that their storage stays
    alive and its address cannot be reused by another tensor.
    """
    key = []
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor) or t.is_inference():
            return None
        try:
            version = t._version
            ptr = t.data_ptr()
        except RuntimeError:
            return None
        key.append((name, ptr, version, tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t))
    return tuple(key)


def _same_key(a: tuple, b: tuple) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x[:7] != y[:7]:
            return False
    return True


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def identity_config(net: torch.nn.Module, entropy: str) -> dict:
    """The fully resolved configuration hashed by :func:`identity_digest`.

    ``{"name", "size", "model": init_config or {"model_config": ...}, "entropy": entropy}``;
    models that do not record their constructor arguments fall back to ``model_config``.
    """
    canonical_config_json(net)  # a one-line CodecError for a model without a configuration
    cfg = net.model_config
    init = getattr(net, "init_config", None)
    model = _jsonable(init) if isinstance(init, dict) else {"class": type(net).__qualname__, "model_config": cfg}
    return {"name": cfg.get("name"), "size": cfg.get("size"), "model": model, "entropy": str(entropy)}


def identity_digest(net: torch.nn.Module, entropy: str, state: Optional[dict] = None) -> bytes:
    """sha256 (32 bytes) of the resolved configuration, the entropy arithmetic and the weights.

    ``state`` replaces ``net.state_dict()`` (e.g. the same tensors under earlier key names).
    """
    return bytes.fromhex(_digest(net, _IDENTITY_TAG, canonical_config_json(identity_config(net, entropy)), state))


def model_fingerprint(net: torch.nn.Module, state: Optional[dict] = None) -> str:
    """sha256 hex digest identifying the configuration and the exact weights of ``net`` (or of ``state``)."""
    return _digest(net, _TAG, canonical_config_json(net), state)


def _digest(net: torch.nn.Module, tag: bytes, cfg_json: bytes, state: Optional[dict] = None) -> str:
    cache = state is None
    state = net.state_dict() if state is None else state
    key = _cache_key(state) if cache else None
    slot = tag + cfg_json
    if key is not None:
        with _LOCK:
            cached = _CACHE.get(net, {}).get(slot)
        if cached is not None and _same_key(cached[1], key):
            return cached[2]
    h = hashlib.sha256()
    h.update(tag)
    _put(h, cfg_json)
    for name in sorted(state):
        value = state[name]
        _put(h, name.encode("utf-8"))
        if not isinstance(value, torch.Tensor):
            # extra state from get_extra_state(): only JSON-able values are supported
            try:
                blob = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError):
                raise CodecError(f"cannot fingerprint state entry {name!r} of type {type(value).__name__}") from None
            _put(h, b"json")
            _put(h, blob.encode("utf-8"))
            continue
        _put(h, str(value.dtype).encode("ascii"))
        _put(h, b",".join(str(int(s)).encode("ascii") for s in value.shape))
        data = _tensor_bytes(value)
        h.update(struct.pack(">Q", data.nbytes))
        h.update(data)
    digest = h.hexdigest()
    if key is not None:
        with _LOCK:
            _CACHE.setdefault(net, {})[slot] = (cfg_json, key, digest)
    return digest
