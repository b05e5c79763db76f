"""File codec: ``.glic`` container, image I/O and model fingerprints.

Public API::

    encode_image(net, image) -> bytes          # uint8 (H, W, 3) -> stream bytes
    decode_image(net, data) -> np.ndarray      # stream bytes -> uint8 (H, W, 3)
    inspect_stream(data) -> dict               # validated header fields, no model needed
    model_fingerprint(net) -> str              # sha256 hex of config + weights
    read_image(path) -> np.ndarray             # any image -> uint8 RGB (notice on stderr)
    write_image(path, array, force=False)      # atomic PNG write
    write_bytes(path, data, force=False)       # atomic binary write
    pretrained_for_stream(data) -> nn.Module   # the shipped model a stream was encoded with

The container layout is documented byte by byte in :mod:`gnn_lic.codec.container` (format 2;
format 1 in :mod:`gnn_lic.codec.container_v1`, the byte encoding in :mod:`gnn_lic.codec.wire`).
"""

import importlib

from gnn_lic.codec.container import inspect_stream
from gnn_lic.errors import (
    CheckpointError,
    CodecError,
    CorruptStreamError,
    ImageReadError,
    ModelMismatchError,
    NoPretrainedWeightsError,
    OutputExistsError,
)

# The container and the errors need neither PyTorch nor the models; the rest is imported on first use
# (PEP 562), so that reading a header (``python -m gnn_lic info``) or refusing a bad file takes no
# seconds of imports.
_LAZY = {
    "config_hash": "fingerprint",
    "model_fingerprint": "fingerprint",
    "decode_image": "image_codec",
    "encode_image": "image_codec",
    "read_image": "image_io",
    "write_bytes": "image_io",
    "write_image": "image_io",
    "pretrained_model": "shipped",
    "pretrained_for_stream": "shipped",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"gnn_lic.codec.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gnn_lic.codec' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "encode_image",
    "decode_image",
    "inspect_stream",
    "model_fingerprint",
    "config_hash",
    "read_image",
    "write_image",
    "write_bytes",
    "pretrained_model",
    "pretrained_for_stream",
    "CodecError",
    "ImageReadError",
    "CorruptStreamError",
    "ModelMismatchError",
    "OutputExistsError",
    "NoPretrainedWeightsError",
    "CheckpointError",
]
