"""The byte-level encoding of the ``.glic`` container: varints and tagged values.

``uvarint`` is an unsigned LEB128 integer (7 bits per byte, least significant group first,
high bit = "more bytes follow"), at most 10 bytes, in its shortest form (a non-minimal
encoding is rejected). Every reader here is bounded by the bytes that remain, so a lying
length field can never cause a large allocation or a long loop.

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
"""

from __future__ import annotations

import operator
import struct
from typing import Any

from gnn_lic.errors import CodecError, CorruptStreamError

__all__ = ["MAX_DEPTH", "ParseError", "Reader", "put_uvarint", "encode_into", "decode_from", "encode_value",
           "decode_value"]

MAX_DEPTH = 32


class ParseError(Exception):
    """A structural problem found while parsing (the container turns it into CorruptStreamError)."""



# ----------------------------------------------------------------------------- varints


def put_uvarint(out: bytearray, value: int) -> None:
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


class Reader:
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
            raise ParseError(f"{what} needs {n} bytes but only {self.remaining} remain")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self, what: str) -> int:
        if self.remaining < 1:
            raise ParseError(f"stream ends inside {what}")
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
                    raise ParseError(f"non-minimal varint in {what}")
                if value >= 1 << 64:
                    raise ParseError(f"varint out of range in {what}")
                return value
        raise ParseError(f"varint too long in {what}")

    def count(self, what: str, min_item_bytes: int = 1) -> int:
        """A length/count bounded by the bytes that remain (each item needs >= 1 byte)."""
        n = self.uvarint(what)
        if n * min_item_bytes > self.remaining:
            raise ParseError(f"{what} claims {n} items/bytes but only {self.remaining} bytes remain")
        return n


# ------------------------------------------------------------------------ tagged values


def _zigzag(value: int) -> int:
    if not -(1 << 63) <= value < (1 << 63):
        raise CodecError(f"integer {value} does not fit in 64 bits")
    return (value << 1) if value >= 0 else ((-value) << 1) - 1


def _unzigzag(value: int) -> int:
    return (value >> 1) if not value & 1 else -((value + 1) >> 1)


def encode_into(out: bytearray, value: Any, depth: int, allow_bytes: bool) -> None:
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
        put_uvarint(out, _zigzag(number))
    elif isinstance(value, float):
        out += b"f" + struct.pack(">d", value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += b"s"
        put_uvarint(out, len(raw))
        out += raw
    elif isinstance(value, (bytes, bytearray, memoryview)):
        if not allow_bytes:
            raise CodecError("bytes are not allowed in the shape structure")
        raw = bytes(value)
        out += b"b"
        put_uvarint(out, len(raw))
        out += raw
    elif isinstance(value, (list, tuple)):  # torch.Size is a tuple subclass
        out += b"l" if isinstance(value, list) else b"t"
        put_uvarint(out, len(value))
        for item in value:
            encode_into(out, item, depth + 1, allow_bytes)
    elif isinstance(value, dict):
        out += b"m"
        put_uvarint(out, len(value))
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"dict keys must be str, got {type(key).__name__}")
            raw = key.encode("utf-8")
            put_uvarint(out, len(raw))
            out += raw
            encode_into(out, item, depth + 1, allow_bytes)
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
    encode_into(out, value, 0, allow_bytes)
    return bytes(out)


def decode_from(r: Reader, depth: int, allow_bytes: bool) -> Any:
    if depth > MAX_DEPTH:
        raise ParseError(f"structure nests deeper than {MAX_DEPTH} levels")
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
            raise ParseError("invalid UTF-8 in a string") from exc
    if tag == 0x62:  # b
        if not allow_bytes:
            raise ParseError("bytes inside the shape structure")
        n = r.count("a byte-string length")
        return r.take(n, "a byte string")
    if tag in (0x6C, 0x74):  # l, t
        n = r.count("a list length")
        items = [decode_from(r, depth + 1, allow_bytes) for _ in range(n)]
        return items if tag == 0x6C else tuple(items)
    if tag == 0x6D:  # m
        n = r.count("a dict size", min_item_bytes=2)
        result = {}
        for _ in range(n):
            k = r.count("a dict key length")
            try:
                key = r.take(k, "a dict key").decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ParseError("invalid UTF-8 in a dict key") from exc
            if key in result:
                raise ParseError(f"duplicate dict key {key!r}")
            result[key] = decode_from(r, depth + 1, allow_bytes)
        return result
    raise ParseError(f"unknown value tag 0x{tag:02x}")


def decode_value(data: bytes, allow_bytes: bool = True) -> Any:
    """Inverse of :func:`encode_value`; raises :class:`CorruptStreamError` on bad input."""
    r = Reader(bytes(data), len(data))
    try:
        value = decode_from(r, 0, allow_bytes)
    except ParseError as exc:
        raise CorruptStreamError(str(exc)) from None
    if r.remaining:
        raise CorruptStreamError(f"{r.remaining} unexpected bytes after the value")
    return value
