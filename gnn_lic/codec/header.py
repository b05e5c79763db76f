"""What both ``.glic`` container formats share: magic, stream kind, limits, field checks and
the parsed record (:class:`ParsedStream`). The layouts are in :mod:`gnn_lic.codec.container`
(format 2) and :mod:`gnn_lic.codec.container_v1` (format 1, still read).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, Optional, Type

from gnn_lic.codec.wire import MAX_DEPTH, ParseError, Reader
from gnn_lic.errors import CodecError

__all__ = ["MAGIC", "KIND_RGB8", "KIND_NAMES", "CRC_BYTES", "MAX_NAME_BYTES", "MAX_SIZE_BYTES", "MAX_IMAGE_SIDE",
           "ParsedStream", "check_label", "read_label", "check_strings", "check_decoded_strings", "check_dims",
           "crc32_bytes"]

MAGIC = b"GLIC"
KIND_RGB8 = 0x01
KIND_NAMES = {KIND_RGB8: "rgb8-image"}
CRC_BYTES = 4
MAX_NAME_BYTES = 64
MAX_SIZE_BYTES = 32
MAX_IMAGE_SIDE = 1 << 20


def crc32_bytes(data: bytes) -> bytes:
    """The big-endian CRC-32 (``zlib.crc32``) of ``data``, as the streams end with it."""
    return struct.pack(">I", zlib.crc32(data) & 0xFFFFFFFF)


@dataclass(frozen=True)
class ParsedStream:
    """Every field of a validated stream."""

    kind: int
    version: int
    model_name: str
    model_size: str
    config_hash: bytes
    weights_hash: bytes
    height: int
    width: int
    shape: Any
    strings: Any
    header_bytes: int
    payload_bytes: int
    total_bytes: int
    crc32: int
    #: format 2: the stored identity prefix, whether the entropy parameters are fixed point,
    #: and whether ``shape`` is implied by the model (then ``shape`` is None here)
    identity: bytes = b""
    fixed_point: bool = False
    shape_implied: bool = False
    #: format 2, with ``fixed_point``: the parameters use scheme w8 (8-bit weights, integer
    #: products) rather than fx16 (float64 products)
    w8: bool = False
    #: format 2: the quality a variable-rate model coded at (None: a single-rate model)
    quality: Optional[float] = None


def check_label(label: str, what: str, max_bytes: int) -> bytes:
    """``label`` as 1..``max_bytes`` printable ASCII bytes (a model name or size), or a CodecError."""
    if not isinstance(label, str):
        raise CodecError(f"{what} must be a str, got {type(label).__name__}")
    raw = label.encode("utf-8")
    if not 1 <= len(raw) <= max_bytes or any(not 0x20 <= c <= 0x7E for c in raw):
        raise CodecError(f"{what} {label!r} must be 1..{max_bytes} printable ASCII characters")
    return raw


def check_strings(value: Any, depth: int = 0) -> None:
    """``value`` is a list (or tuple), nested at most MAX_DEPTH deep, whose leaves are bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        if depth == 0:
            raise CodecError("'strings' must be a list of (lists of) bytes, not bytes")
        return
    if depth > MAX_DEPTH:
        raise CodecError(f"'strings' nests deeper than {MAX_DEPTH} levels")
    if not isinstance(value, (list, tuple)):
        raise CodecError(f"'strings' may only contain lists and bytes, found {type(value).__name__}")
    for item in value:
        check_strings(item, depth + 1)


def check_dims(height: Any, width: Any, error: Type[CodecError] = CodecError) -> None:
    """Both image dimensions are integers in 1..MAX_IMAGE_SIDE, else ``error`` (CorruptStreamError
    for dimensions read from a stream)."""
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_IMAGE_SIDE:
            raise error(f"image {name} {v!r} is outside 1..{MAX_IMAGE_SIDE}")


def read_label(r: Reader, what: str, max_bytes: int) -> str:
    """Read a ``uvarint``-length label written after :func:`check_label`."""
    n = r.count(f"the {what} length")
    if not 1 <= n <= max_bytes:
        raise ParseError(f"{what} length {n} is outside 1..{max_bytes}")
    raw = r.take(n, f"the {what}")
    if any(not 0x20 <= c <= 0x7E for c in raw):
        raise ParseError(f"{what} is not printable ASCII")
    return raw.decode("ascii")


def check_decoded_strings(value: Any, depth: int = 0) -> int:
    """Validate the decoded 'strings' structure; return the payload byte count."""
    if isinstance(value, bytes):
        if depth == 0:
            raise ParseError("'strings' is a bare byte string")
        return len(value)
    if not isinstance(value, (list, tuple)):
        raise ParseError(f"'strings' contains a {type(value).__name__}")
    return sum(check_decoded_strings(item, depth + 1) for item in value)
