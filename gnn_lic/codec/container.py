"""The ``.glic`` container: a self-describing, checksummed file for one compressed image.

Layout (version 2, written since the fixed-point entropy parameters)
====================================================================

Fixed-width integers are big-endian; ``uvarint`` as below (shortest form only).

======  =======  ==============================================================
offset  size     field
======  =======  ==============================================================
0       4        magic ``b"GLIC"``
4       1        stream kind: ``0x01`` = one RGB image, 8 bits per channel
5       1        format version: ``0x02``
6       1        flags: bit 0 = entropy parameters in fixed point
                 (:mod:`gnn_lic.models.fixed_point`; decodes the same everywhere);
                 bit 1 = explicit shape; bit 2 = explicit strings structure;
                 bit 3 = model named by labels; other bits must be 0
7       var      model: ``uvarint`` code into :data:`MODEL_CODES` (bit 3 clear), or
                 the name and size labels of version 1 (bit 3 set)
...     4        identity: the first 4 bytes of
                 :func:`gnn_lic.codec.fingerprint.identity_digest` (resolved model
                 configuration, entropy arithmetic and weights)
...     var      original image height, then width, ``uvarint`` (1..2**20)
...     var      shape, a tagged value, only with bit 1; otherwise the model implies
                 it from the image size (:func:`gnn_lic.codec.image_codec.implied_shape`)
...     var      strings: with bit 2 one tagged value as in version 1; otherwise
                 ``uvarint`` count ``n`` (1..64), the ``uvarint`` byte lengths of the
                 first ``n - 1`` strings, then the ``n`` strings back to back (the last
                 one runs to the checksum); they stand for ``[[s_0], ..., [s_{n-1}]]``
end-4   4        CRC-32 (``zlib.crc32``) of every preceding byte, big-endian
======  =======  ==============================================================

A GLIC or GABIC stream of a shipped model spends 6 + 1 + 1 + 4 + 4 (two dimensions
below 16384) + 1 + 2 + 4 = 23 bytes besides its entropy-coded payload.

Layout (version 1, still read)
==============================

All multi-byte fixed-width integers are big-endian.  ``uvarint`` is an unsigned LEB128
integer (7 bits per byte, least significant group first, high bit = "more bytes follow"),
at most 10 bytes, in its shortest form (a non-minimal encoding is rejected).

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
...     var      ``shape``: one tagged value (below), the ``"shape"`` returned by
                 ``net.compress``; may not contain ``bytes``
...     var      ``strings``: one tagged value, the ``"strings"`` returned by
                 ``net.compress``: a list (or tuple) nested to any depth whose
                 leaves are ``bytes`` (the entropy-coded streams)
end-4   4        CRC-32 (``zlib.crc32``) of every preceding byte, big-endian
======  =======  ==============================================================

Nothing may follow the checksum.

Tagged values
-------------

A tagged value is one ASCII tag byte followed by its body:

=====  =========  ===================================================================
tag    type       body
=====  =========  ===================================================================
``N``  None       (empty)
``F``  False      (empty)
``T``  True       (empty)
``i``  int        zig-zag encoded ``uvarint`` (so ``-2**63 <= value < 2**63``)
``f``  float      8 bytes IEEE-754 binary64, big-endian
``s``  str        ``uvarint`` byte length + UTF-8 bytes
``b``  bytes      ``uvarint`` length + raw bytes
``l``  list       ``uvarint`` item count + that many tagged values
``t``  tuple      ``uvarint`` item count + that many tagged values (``torch.Size``
                  is written as a tuple)
``m``  dict       ``uvarint`` entry count + per entry: key (``uvarint`` byte length +
                  UTF-8, keys must be ``str`` and unique) + tagged value
=====  =========  ===================================================================

Containers nest at most 32 deep.  No pickle and no ``eval`` is involved anywhere.

Validation
----------

:func:`parse_stream` checks the magic, kind and version, bounds every length and count
by the bytes that remain (so a lying length field can never cause a large allocation or a
long loop), parses the whole structure, requires the checksum to sit exactly at the end,
verifies the CRC-32 and validates the field values.  Any failure raises
:class:`~gnn_lic.errors.CorruptStreamError`.  A stream that reaches the entropy
decoder has therefore passed the checksum; a random, truncated or bit-flipped file is
rejected beforehand (the CRC detects every error burst of up to 32 bits).
"""

from __future__ import annotations

import math
import operator
import struct
import zlib
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from gnn_lic.errors import CodecError, CorruptStreamError

__all__ = [
    "MODEL_CODES",
    "FLAG_FIXED_POINT",
    "IDENTITY_BYTES",
    "pack_stream_v1",
    "MAGIC",
    "KIND_RGB8",
    "FORMAT_VERSION",
    "HASH_BYTES",
    "MAX_IMAGE_SIDE",
    "ParsedStream",
    "pack_stream",
    "parse_stream",
    "inspect_stream",
    "encode_value",
    "decode_value",
]

MAGIC = b"GLIC"
KIND_RGB8 = 0x01
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
HASH_BYTES = 16
IDENTITY_BYTES = 4
MAX_STRINGS = 64
FLAG_FIXED_POINT = 0x01
FLAG_SHAPE = 0x02
FLAG_STRINGS = 0x04
FLAG_LABELS = 0x08
_KNOWN_FLAGS = FLAG_FIXED_POINT | FLAG_SHAPE | FLAG_STRINGS | FLAG_LABELS
#: model codes of format 2 (append only: a code, once written, keeps its meaning)
MODEL_CODES = (
    None,
    ("glic", "small"), ("gabic", "small"), ("glic", "tiny"), ("gabic", "tiny"), ("glic", "paper"),
    ("gabic", "paper"), ("wacnn", "tiny"), ("wacnn", "small"), ("wacnn", "paper"), ("cnn", "tiny"),
    ("cnn", "small"), ("cnn", "paper"),
)  # fmt: skip
_CODE_OF = {pair: i for i, pair in enumerate(MODEL_CODES) if pair is not None}
MAX_NAME_BYTES = 64
MAX_SIZE_BYTES = 32
MAX_IMAGE_SIDE = 1 << 20
MAX_DEPTH = 32
_CRC_BYTES = 4
_PREFIX = MAGIC + bytes([KIND_RGB8, 1])
_PREFIX_V2 = MAGIC + bytes([KIND_RGB8, 2])
# magic + kind + version + 2 one-byte-length names with >= 1 byte + 2 hashes + 2 dims
# + 2 smallest tagged values + crc
_MIN_STREAM_BYTES = len(_PREFIX) + 2 * 2 + 2 * HASH_BYTES + 2 + 2 + _CRC_BYTES

_KIND_NAMES = {KIND_RGB8: "rgb8-image"}


class _ParseError(Exception):
    """Internal: structural problem found while parsing (becomes CorruptStreamError)."""


# ----------------------------------------------------------------------------- varints


def _put_uvarint(out: bytearray, value: int) -> None:
    if value < 0 or value >= 1 << 64:
        raise CodecError(f"cannot encode {value} as an unsigned varint")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


class _Reader:
    """Bounds-checked cursor over the stream bytes."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, end: int):
        self.data = data
        self.pos = 0
        self.end = end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining:
            raise _ParseError(f"{what} needs {n} bytes but only {self.remaining} remain")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        if self.remaining < 1:
            raise _ParseError(f"stream ends inside {what}")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uvarint(self, what: str) -> int:
        value = 0
        for i in range(10):
            b = self.byte(what)
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise _ParseError(f"non-minimal varint in {what}")
                if value >= 1 << 64:
                    raise _ParseError(f"varint out of range in {what}")
                return value
        raise _ParseError(f"varint too long in {what}")

    def count(self, what: str, min_item_bytes: int = 1) -> int:
        """A length/count bounded by the bytes that remain (each item needs >= 1 byte)."""
        n = self.uvarint(what)
        if n * min_item_bytes > self.remaining:
            raise _ParseError(f"{what} claims {n} items/bytes but only {self.remaining} bytes remain")
        return n


# ------------------------------------------------------------------------ tagged values


def _zigzag(value: int) -> int:
    if not -(1 << 63) <= value < (1 << 63):
        raise CodecError(f"integer {value} does not fit in 64 bits")
    return (value << 1) if value >= 0 else ((-value) << 1) - 1


def _unzigzag(value: int) -> int:
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)


def _encode_into(out: bytearray, value: Any, depth: int, allow_bytes: bool) -> None:
    if depth > MAX_DEPTH:
        raise CodecError(f"structure nests deeper than {MAX_DEPTH} levels")
    if value is None:
        out += b"N"
    elif value is True:
        out += b"T"
    elif value is False:
        out += b"F"
    elif isinstance(value, int) or _is_integer_like(value):
        try:
            number = operator.index(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CodecError(f"cannot serialise {type(value).__name__} as an integer: {exc}") from None
        out += b"i"
        _put_uvarint(out, _zigzag(number))
    elif isinstance(value, float):
        out += b"f" + struct.pack(">d", value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += b"s"
        _put_uvarint(out, len(raw))
        out += raw
    elif isinstance(value, (bytes, bytearray, memoryview)):
        if not allow_bytes:
            raise CodecError("bytes are not allowed in the shape structure")
        raw = bytes(value)
        out += b"b"
        _put_uvarint(out, len(raw))
        out += raw
    elif isinstance(value, (list, tuple)):  # torch.Size is a tuple subclass
        out += b"l" if isinstance(value, list) else b"t"
        _put_uvarint(out, len(value))
        for item in value:
            _encode_into(out, item, depth + 1, allow_bytes)
    elif isinstance(value, dict):
        out += b"m"
        _put_uvarint(out, len(value))
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"dict keys must be str, got {type(key).__name__}")
            raw = key.encode("utf-8")
            _put_uvarint(out, len(raw))
            out += raw
            _encode_into(out, item, depth + 1, allow_bytes)
    else:
        raise CodecError(f"cannot serialise a value of type {type(value).__name__} in the stream")


def _is_integer_like(value: Any) -> bool:
    """numpy integers and integer 0-d tensors (without importing numpy/torch here)."""
    if isinstance(value, (bool, float)):
        return False
    index = getattr(type(value), "__index__", None)
    return index is not None


def encode_value(value: Any, allow_bytes: bool = True) -> bytes:
    """Serialise ``value`` as one tagged value (see the module docstring)."""
    out = bytearray()
    _encode_into(out, value, 0, allow_bytes)
    return bytes(out)


def _decode_from(r: _Reader, depth: int, allow_bytes: bool) -> Any:
    if depth > MAX_DEPTH:
        raise _ParseError(f"structure nests deeper than {MAX_DEPTH} levels")
    tag = r.byte("a tagged value")
    if tag == 0x4E:  # N
        return None
    if tag == 0x54:  # T
        return True
    if tag == 0x46:  # F
        return False
    if tag == 0x69:  # i
        return _unzigzag(r.uvarint("an integer"))
    if tag == 0x66:  # f
        return struct.unpack(">d", r.take(8, "a float"))[0]
    if tag == 0x73:  # s
        n = r.count("a string length")
        try:
            return r.take(n, "a string").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _ParseError("invalid UTF-8 in a string") from exc
    if tag == 0x62:  # b
        if not allow_bytes:
            raise _ParseError("bytes inside the shape structure")
        n = r.count("a byte-string length")
        return r.take(n, "a byte string")
    if tag in (0x6C, 0x74):  # l, t
        n = r.count("a list length")
        items = [_decode_from(r, depth + 1, allow_bytes) for _ in range(n)]
        return items if tag == 0x6C else tuple(items)
    if tag == 0x6D:  # m
        n = r.count("a dict size", min_item_bytes=2)
        result = {}
        for _ in range(n):
            k = r.count("a dict key length")
            try:
                key = r.take(k, "a dict key").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _ParseError("invalid UTF-8 in a dict key") from exc
            if key in result:
                raise _ParseError(f"duplicate dict key {key!r}")
            result[key] = _decode_from(r, depth + 1, allow_bytes)
        return result
    raise _ParseError(f"unknown value tag 0x{tag:02x}")


def decode_value(data: bytes, allow_bytes: bool = True) -> Any:
    """Inverse of :func:`encode_value`; raises :class:`CorruptStreamError` on bad input."""
    r = _Reader(bytes(data), len(data))
    try:
        value = _decode_from(r, 0, allow_bytes)
    except _ParseError as exc:
        raise CorruptStreamError(str(exc)) from None
    if r.remaining:
        raise CorruptStreamError(f"{r.remaining} unexpected bytes after the value")
    return value


# ----------------------------------------------------------------------------- streams


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


def _check_label(label: str, what: str, max_bytes: int) -> bytes:
    if not isinstance(label, str):
        raise CodecError(f"{what} must be a str, got {type(label).__name__}")
    raw = label.encode("utf-8")
    if not 1 <= len(raw) <= max_bytes or any(not 0x20 <= c <= 0x7E for c in raw):
        raise CodecError(f"{what} {label!r} must be 1..{max_bytes} printable ASCII characters")
    return raw


def _check_strings(value: Any, depth: int = 0) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        if depth == 0:
            raise CodecError("'strings' must be a list of (lists of) bytes, not bytes")
        return
    if depth > MAX_DEPTH:
        raise CodecError(f"'strings' nests deeper than {MAX_DEPTH} levels")
    if not isinstance(value, (list, tuple)):
        raise CodecError(f"'strings' may only contain lists and bytes, found {type(value).__name__}")
    for item in value:
        _check_strings(item, depth + 1)


def _check_dims(height: Any, width: Any) -> None:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_IMAGE_SIDE:
            raise CodecError(f"image {name} {v!r} is outside 1..{MAX_IMAGE_SIDE}")


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
    name_raw = _check_label(model_name, "model name", MAX_NAME_BYTES)
    size_raw = _check_label(model_size, "model size", MAX_SIZE_BYTES)
    for what, h in (("configuration hash", config_hash), ("weights hash", weights_hash)):
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_BYTES:
            raise CodecError(f"{what} must be {HASH_BYTES} bytes")
    _check_dims(height, width)
    _check_strings(strings)
    out = bytearray(_PREFIX)
    _put_uvarint(out, len(name_raw))
    out += name_raw
    _put_uvarint(out, len(size_raw))
    out += size_raw
    out += bytes(config_hash)
    out += bytes(weights_hash)
    _put_uvarint(out, height)
    _put_uvarint(out, width)
    _encode_into(out, shape, 0, allow_bytes=False)
    _encode_into(out, strings, 0, allow_bytes=True)
    out += struct.pack(">I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def _read_label(r: _Reader, what: str, max_bytes: int) -> str:
    n = r.count(f"the {what} length")
    if not 1 <= n <= max_bytes:
        raise _ParseError(f"{what} length {n} is outside 1..{max_bytes}")
    raw = r.take(n, f"the {what}")
    if any(not 0x20 <= c <= 0x7E for c in raw):
        raise _ParseError(f"{what} is not printable ASCII")
    return raw.decode("ascii")


def _check_decoded_strings(value: Any, depth: int = 0) -> int:
    """Validate the decoded 'strings' structure; return the payload byte count."""
    if isinstance(value, bytes):
        if depth == 0:
            raise _ParseError("'strings' is a bare byte string")
        return len(value)
    if not isinstance(value, (list, tuple)):
        raise _ParseError(f"'strings' contains a {type(value).__name__}")
    return sum(_check_decoded_strings(item, depth + 1) for item in value)


def parse_stream(data: bytes) -> ParsedStream:
    """Parse and fully validate a stream (format 1 or 2); raise :class:`CorruptStreamError` on any problem."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if n == 0:
        raise CorruptStreamError("empty input: not a gnn_lic compressed file")
    if not data.startswith(MAGIC[: min(n, len(MAGIC))]):
        raise CorruptStreamError("not a gnn_lic compressed file (bad magic bytes)")
    if n < len(_PREFIX):
        raise CorruptStreamError(f"truncated stream ({n} bytes)")
    if data[4] != KIND_RGB8:
        raise CorruptStreamError(f"unknown stream kind 0x{data[4]:02x} (this version reads 0x{KIND_RGB8:02x})")
    if data[5] not in READ_VERSIONS:
        raise CorruptStreamError(
            f"unsupported format version {data[5]} (this version of gnn_lic reads versions 1 and 2)"
        )
    if data[5] == 2:
        return _parse_v2(data)
    if n < _MIN_STREAM_BYTES:
        raise CorruptStreamError(f"truncated stream ({n} bytes, a valid stream has at least {_MIN_STREAM_BYTES})")

    # The structure must end exactly _CRC_BYTES before the end of the data.
    r = _Reader(data, n - _CRC_BYTES)
    try:
        r.pos = len(_PREFIX)
        model_name = _read_label(r, "model name", MAX_NAME_BYTES)
        model_size = _read_label(r, "model size", MAX_SIZE_BYTES)
        config_hash = r.take(HASH_BYTES, "the configuration hash")
        weights_hash = r.take(HASH_BYTES, "the weights hash")
        height = r.uvarint("the image height")
        width = r.uvarint("the image width")
        header_bytes = r.pos
        shape = _decode_from(r, 0, allow_bytes=False)
        strings = _decode_from(r, 0, allow_bytes=True)
        payload_bytes = _check_decoded_strings(strings)
    except _ParseError as exc:
        raise CorruptStreamError(f"truncated or corrupt stream: {exc}") from None
    if r.remaining:
        # Either trailing garbage after a complete stream, or a corrupt length field.
        end = r.pos
        stored = data[end : end + _CRC_BYTES]
        if len(stored) == _CRC_BYTES and struct.unpack(">I", stored)[0] == zlib.crc32(data[:end]) & 0xFFFFFFFF:
            extra = n - end - _CRC_BYTES
            raise CorruptStreamError(f"{extra} bytes of trailing garbage after the stream")
        raise CorruptStreamError("corrupt stream: lengths are inconsistent with the checksum")
    stored_crc = struct.unpack(">I", data[n - _CRC_BYTES :])[0]
    actual_crc = zlib.crc32(data[: n - _CRC_BYTES]) & 0xFFFFFFFF
    if stored_crc != actual_crc:
        raise CorruptStreamError(
            f"checksum mismatch (stored {stored_crc:08x}, computed {actual_crc:08x}): the file is corrupt"
        )
    try:
        _check_dims(height, width)
    except CodecError as exc:
        raise CorruptStreamError(str(exc)) from None
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


# --------------------------------------------------------------------------- format 2


def _model_field(model_name: str, model_size: str) -> Tuple[int, bytes]:
    code = _CODE_OF.get((model_name, model_size))
    if code is not None:
        out = bytearray()
        _put_uvarint(out, code)
        return 0, bytes(out)
    out = bytearray()
    for label, what, limit in ((model_name, "model name", MAX_NAME_BYTES), (model_size, "model size", MAX_SIZE_BYTES)):
        raw = _check_label(label, what, limit)
        _put_uvarint(out, len(raw))
        out += raw
    return FLAG_LABELS, bytes(out)


def _flat_strings(strings: Any) -> Optional[List[bytes]]:
    """``[[s_0], [s_1], ...]`` -> ``[s_0, s_1, ...]``; None for any other structure."""
    if not isinstance(strings, list) or not 1 <= len(strings) <= MAX_STRINGS:
        return None
    flat = []
    for item in strings:
        if not (isinstance(item, list) and len(item) == 1 and isinstance(item[0], (bytes, bytearray))):
            return None
        flat.append(bytes(item[0]))
    return flat


def pack_stream(
    *,
    model_name: str,
    model_size: str,
    identity: bytes,
    fixed_point: bool,
    height: int,
    width: int,
    shape: Any,
    strings: Any,
) -> bytes:
    """Assemble a version-2 stream (layout in the module docstring).

    ``shape=None`` means the model implies it from the image size; ``strings`` of the
    form ``[[bytes], ...]`` are stored flat, anything else as a tagged value.
    """
    if not isinstance(identity, (bytes, bytearray)) or len(identity) < IDENTITY_BYTES:
        raise CodecError(f"identity must be at least {IDENTITY_BYTES} bytes")
    _check_dims(height, width)
    _check_strings(strings)
    flags, model = _model_field(model_name, model_size)
    flags |= FLAG_FIXED_POINT if fixed_point else 0
    flat = _flat_strings(strings)
    flags |= FLAG_SHAPE if shape is not None else 0
    flags |= FLAG_STRINGS if flat is None else 0
    out = bytearray(_PREFIX_V2)
    out.append(flags)
    out += model
    out += bytes(identity[:IDENTITY_BYTES])
    _put_uvarint(out, height)
    _put_uvarint(out, width)
    if shape is not None:
        _encode_into(out, shape, 0, allow_bytes=False)
    if flat is None:
        _encode_into(out, strings, 0, allow_bytes=True)
    else:
        _put_uvarint(out, len(flat))
        for s_ in flat[:-1]:
            _put_uvarint(out, len(s_))
        for s_ in flat:
            out += s_
    out += struct.pack(">I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def _parse_v2(data: bytes) -> ParsedStream:
    n = len(data)
    min_bytes = len(_PREFIX_V2) + 1 + 1 + IDENTITY_BYTES + 2 + 1 + _CRC_BYTES
    if n < min_bytes:
        raise CorruptStreamError(f"truncated stream ({n} bytes, a valid stream has at least {min_bytes})")
    stored_crc = struct.unpack(">I", data[n - _CRC_BYTES :])[0]
    if stored_crc != zlib.crc32(data[: n - _CRC_BYTES]) & 0xFFFFFFFF:
        raise CorruptStreamError("checksum mismatch: the file is corrupt or truncated")
    r = _Reader(data, n - _CRC_BYTES)
    try:
        r.pos = len(_PREFIX_V2)
        flags = r.byte("the flags")
        if flags & ~_KNOWN_FLAGS:
            raise _ParseError(f"unknown flags 0x{flags:02x}")
        if flags & FLAG_LABELS:
            model_name = _read_label(r, "model name", MAX_NAME_BYTES)
            model_size = _read_label(r, "model size", MAX_SIZE_BYTES)
        else:
            code = r.uvarint("the model code")
            if not 1 <= code < len(MODEL_CODES):
                raise _ParseError(f"unknown model code {code}")
            model_name, model_size = MODEL_CODES[code]
        identity = r.take(IDENTITY_BYTES, "the model identity")
        height = r.uvarint("the image height")
        width = r.uvarint("the image width")
        header_bytes = r.pos
        shape = _decode_from(r, 0, allow_bytes=False) if flags & FLAG_SHAPE else None
        if flags & FLAG_STRINGS:
            strings = _decode_from(r, 0, allow_bytes=True)
            payload_bytes = _check_decoded_strings(strings)
        else:
            count = r.uvarint("the string count")
            if not 1 <= count <= MAX_STRINGS:
                raise _ParseError(f"string count {count} is outside 1..{MAX_STRINGS}")
            lengths = [r.count("a string length") for _ in range(count - 1)]
            if sum(lengths) > r.remaining:
                raise _ParseError(f"string lengths {sum(lengths)} exceed the {r.remaining} bytes left")
            lengths.append(r.remaining - sum(lengths))
            strings = [[r.take(k, "a string")] for k in lengths]
            payload_bytes = sum(lengths)
    except _ParseError as exc:
        raise CorruptStreamError(f"corrupt stream: {exc}") from None
    if r.remaining:
        raise CorruptStreamError(f"corrupt stream: {r.remaining} bytes after the strings")
    try:
        _check_dims(height, width)
    except CodecError as exc:
        raise CorruptStreamError(str(exc)) from None
    return ParsedStream(
        kind=data[4], version=2, model_name=model_name, model_size=model_size, config_hash=b"", weights_hash=b"",
        height=height, width=width, shape=shape, strings=strings, header_bytes=header_bytes,
        payload_bytes=payload_bytes, total_bytes=n, crc32=stored_crc, identity=bytes(identity),
        fixed_point=bool(flags & FLAG_FIXED_POINT), shape_implied=not flags & FLAG_SHAPE,
    )


def _layout(strings: Any) -> Any:
    if isinstance(strings, bytes):
        return len(strings)
    return [_layout(s) for s in strings]


def _count_leaves(strings: Any) -> int:
    if isinstance(strings, bytes):
        return 1
    return sum(_count_leaves(s) for s in strings)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def inspect_stream(data: bytes) -> dict:
    """Validate a stream without a model and return its header fields as a JSON-able dict.

    Keys: ``format``, ``kind``, ``version``, ``model_name``, ``model_size``,
    ``config_hash`` and ``weights_hash`` (format 1: hex of the stored 16-byte prefixes;
    format 2: empty), ``identity`` (format 2: hex of the stored identity prefix),
    ``fixed_point``, ``overhead_bytes`` (``total_bytes - payload_bytes``),
    ``height``, ``width``, ``shape`` (lists instead of tuples), ``strings_layout`` (the
    nesting of the entropy-coded strings with each string replaced by its length),
    ``num_strings``, ``payload_bytes``, ``header_bytes`` (bytes before the shape),
    ``total_bytes`` and ``crc32`` (hex).
    """
    p = parse_stream(data)
    return {
        "format": MAGIC.decode("ascii"),
        "kind": _KIND_NAMES.get(p.kind, f"0x{p.kind:02x}"),
        "version": p.version,
        "model_name": p.model_name,
        "model_size": p.model_size,
        "config_hash": p.config_hash.hex(),
        "weights_hash": p.weights_hash.hex(),
        "identity": p.identity.hex(),
        "fixed_point": p.fixed_point,
        "overhead_bytes": p.total_bytes - p.payload_bytes,
        "height": p.height,
        "width": p.width,
        "shape": _jsonable(p.shape),
        "strings_layout": _layout(p.strings),
        "num_strings": _count_leaves(p.strings),
        "payload_bytes": p.payload_bytes,
        "header_bytes": p.header_bytes,
        "total_bytes": p.total_bytes,
        "crc32": f"{p.crc32:08x}",
    }

