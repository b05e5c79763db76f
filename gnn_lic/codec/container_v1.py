"""Format 1 of the ``.glic`` container: written before the fixed-point entropy parameters,
still read (format 2, what is written now, is in :mod:`gnn_lic.codec.container`).

Layout (version 1, still read)
==============================

All multi-byte fixed-width integers are big-endian; ``uvarint`` and the tagged values are
:mod:`gnn_lic.codec.wire`'s.

======  =======  ==============================================================
offset  size     field
======  =======  ==============================================================
0       4        magic ``b"GLIC"``
4       1        stream kind: ``0x01`` = one RGB image, 8 bits per channel
5       1        format version: ``0x01``
6       var      model name: ``uvarint`` length (1..64) + ASCII bytes (0x20..0x7E)
...     var      model size: ``uvarint`` length (1..32) + ASCII bytes (0x20..0x7E)
...     16       configuration hash: the first 16 bytes of
                 ``sha256(canonical JSON of net.model_config)``
                 (see :func:`gnn_lic.codec.fingerprint.config_hash`)
...     16       weights hash: the first 16 bytes of the model fingerprint
                 (see :func:`gnn_lic.codec.fingerprint.model_fingerprint`)
...     var      original image height, ``uvarint`` (1..2**20)
...     var      original image width, ``uvarint`` (1..2**20)
...     var      ``shape``: one tagged value, the ``"shape"`` returned by
                 ``net.compress``; may not contain ``bytes``
...     var      ``strings``: one tagged value, the ``"strings"`` returned by
                 ``net.compress``: a list (or tuple) nested to any depth whose
                 leaves are ``bytes`` (the entropy-coded streams)
end-4   4        CRC-32 (``zlib.crc32``) of every preceding byte, big-endian
======  =======  ==============================================================

Nothing may follow the checksum.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from gnn_lic.codec.header import (
    CRC_BYTES,
    KIND_RGB8,
    MAGIC,
    MAX_NAME_BYTES,
    MAX_SIZE_BYTES,
    ParsedStream,
    check_decoded_strings,
    check_dims,
    check_label,
    check_strings,
    crc32_bytes,
    read_label,
)
from gnn_lic.codec.wire import ParseError, Reader, decode_from, encode_into, put_uvarint
from gnn_lic.errors import CodecError, CorruptStreamError

__all__ = ["HASH_BYTES", "pack_stream_v1", "parse_stream_v1"]

HASH_BYTES = 16
_PREFIX = MAGIC + bytes([KIND_RGB8, 1])
# magic + kind + version + 2 one-byte-length names with >= 1 byte + 2 hashes + 2 dims
# + 2 smallest tagged values + crc
_MIN_STREAM_BYTES = len(_PREFIX) + 2 * 2 + 2 * HASH_BYTES + 2 + 2 + CRC_BYTES


def pack_stream_v1(
    *,
    model_name: str,
    model_size: str,
    config_hash: bytes,
    weights_hash: bytes,
    height: int,
    width: int,
    shape: Any,
    strings: Any,
) -> bytes:
    """Assemble a version-1 stream (layout in the module docstring); kept for tests and tools."""
    name_raw = check_label(model_name, "model name", MAX_NAME_BYTES)
    size_raw = check_label(model_size, "model size", MAX_SIZE_BYTES)
    for what, h in (("configuration hash", config_hash), ("weights hash", weights_hash)):
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_BYTES:
            raise CodecError(f"{what} must be {HASH_BYTES} bytes")
    check_dims(height, width)
    check_strings(strings)
    out = bytearray(_PREFIX)
    put_uvarint(out, len(name_raw))
    out += name_raw
    put_uvarint(out, len(size_raw))
    out += size_raw
    out += bytes(config_hash)
    out += bytes(weights_hash)
    put_uvarint(out, height)
    put_uvarint(out, width)
    encode_into(out, shape, 0, allow_bytes=False)
    encode_into(out, strings, 0, allow_bytes=True)
    out += crc32_bytes(out)
    return bytes(out)


def parse_stream_v1(data: bytes) -> ParsedStream:
    """Parse and validate a format-1 stream (its first six bytes already checked by
    :func:`gnn_lic.codec.container.parse_stream`); raise :class:`CorruptStreamError` on any problem."""
    n = len(data)
    if n < _MIN_STREAM_BYTES:
        raise CorruptStreamError(f"truncated stream ({n} bytes, a valid stream has at least {_MIN_STREAM_BYTES})")

    # The structure must end exactly CRC_BYTES before the end of the data.
    r = Reader(data, n - CRC_BYTES)
    try:
        r.pos = len(_PREFIX)
        model_name = read_label(r, "model name", MAX_NAME_BYTES)
        model_size = read_label(r, "model size", MAX_SIZE_BYTES)
        config_hash = r.take(HASH_BYTES, "the configuration hash")
        weights_hash = r.take(HASH_BYTES, "the weights hash")
        height = r.uvarint("the image height")
        width = r.uvarint("the image width")
        header_bytes = r.pos
        shape = decode_from(r, 0, allow_bytes=False)
        strings = decode_from(r, 0, allow_bytes=True)
        payload_bytes = check_decoded_strings(strings)
    except ParseError as exc:
        raise CorruptStreamError(f"truncated or corrupt stream: {exc}") from None
    if r.remaining:
        # Either trailing garbage after a complete stream, or a corrupt length field.
        end = r.pos
        stored = data[end : end + CRC_BYTES]
        if stored == crc32_bytes(data[:end]):
            extra = n - end - CRC_BYTES
            raise CorruptStreamError(f"{extra} bytes of trailing garbage after the stream")
        raise CorruptStreamError("corrupt stream: lengths are inconsistent with the checksum")
    stored_crc = struct.unpack(">I", data[n - CRC_BYTES :])[0]
    actual_crc = zlib.crc32(data[: n - CRC_BYTES]) & 0xFFFFFFFF
    if stored_crc != actual_crc:
        raise CorruptStreamError(
            f"checksum mismatch (stored {stored_crc:08x}, computed {actual_crc:08x}): the file is corrupt"
        )
    check_dims(height, width, CorruptStreamError)
    return ParsedStream(
        kind=data[4],
        version=data[5],
        model_name=model_name,
        model_size=model_size,
        config_hash=config_hash,
        weights_hash=weights_hash,
        height=height,
        width=width,
        shape=shape,
        strings=strings,
        header_bytes=header_bytes,
        payload_bytes=payload_bytes,
        total_bytes=n,
        crc32=stored_crc,
    )
