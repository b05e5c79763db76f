"""File codec: ``.glic`` container, image I/O and model fingerprints.

Public API::

    encode_image(net, image) -> bytes          # uint8 (H, W, 3) -> stream bytes
    decode_image(net, data) -> np.ndarray      # stream bytes -> uint8 (H, W, 3)
    inspect_stream(data) -> dict               # validated header fields, no model needed
    model_fingerprint(net) -> str              # sha256 hex of config + weights
    read_image(path) -> np.ndarray             # any image -> uint8 RGB (notice on stderr)
    write_image(path, array, force=False)      # atomic PNG write
    write_bytes(path, data, force=False)       # atomic binary write

The container layout is documented byte by byte in :mod:`gnn_lic.codec.container` (format 2;
format 1 in :mod:`gnn_lic.codec.container_v1`, the byte encoding in :mod:`gnn_lic.codec.wire`).
"""

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
from gnn_lic.codec.fingerprint import config_hash, model_fingerprint
from gnn_lic.codec.image_codec import decode_image, encode_image
from gnn_lic.codec.image_io import read_image, write_bytes, write_image

__all__ = [
    "encode_image",
    "decode_image",
    "inspect_stream",
    "model_fingerprint",
    "config_hash",
    "read_image",
    "write_image",
    "write_bytes",
    "CodecError",
    "ImageReadError",
    "CorruptStreamError",
    "ModelMismatchError",
    "OutputExistsError",
    "NoPretrainedWeightsError",
    "CheckpointError",
]
