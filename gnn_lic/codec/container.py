"""The ``.glic`` container: a self-describing, checksummed file for one compressed image.

Layout (version 2, written since the fixed-point entropy parameters)
====================================================================

Fixed-width integers are big-endian; ``uvarint`` as in :mod:`gnn_lic.codec.wire` (shortest form only).

======  =======  ==============================================================
offset  size     field
======  =======  ==============================================================
0       4        magic ``b"GLIC"``
4       1        stream kind: ``0x01`` = one RGB image, 8 bits per channel
5       1        format version: ``0x02``
6       1        flags: bit 0 = entropy parameters in fixed point
                 (:mod:`gnn_lic.models.fixed_point`; decodes the same everywhere);
                 bit 1 = explicit shape; bit 2 = explicit strings structure;
                 bit 3 = model named by labels; bit 4 = quality field;
                 bit 5 (only with bit 0) = fixed-point scheme w8 (8-bit weights,
                 integer products; :mod:`gnn_lic.models.fixed_point.int8`), clear:
                 scheme fx16 (float64 products); other bits must be 0
7       var      model: ``uvarint`` code into :data:`MODEL_CODES` (bit 3 clear), or
                 the name and size labels of version 1 (bit 3 set)
...     4        identity: the first 4 bytes of
                 :func:`gnn_lic.codec.fingerprint.identity_digest` (resolved model
                 configuration, entropy arithmetic and weights)
...     var      original image height, then width, ``uvarint`` (1..2**20)
...     var      quality of a variable-rate model, only with bit 4: ``uvarint``
                 ``round(quality * 256)`` (quality in 1..64, steps of 1/256; the
                 encoder codes at exactly that quality, see :func:`quality_code`)
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

Format 1 (written before the fixed-point entropy parameters) is still read; its layout is
in :mod:`gnn_lic.codec.container_v1`. ``uvarint`` and the tagged values of both formats
are :mod:`gnn_lic.codec.wire`'s; what the formats share is in :mod:`gnn_lic.codec.header`.

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
import struct
from typing import Any, List, Optional, Tuple

from gnn_lic.codec.container_v1 import parse_stream_v1
from gnn_lic.codec.header import (
    CRC_BYTES,
    KIND_NAMES,
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

__all__ = [
    "MODEL_CODES",
    "FLAG_FIXED_POINT",
    "FLAG_W8",
    "IDENTITY_BYTES",
    "QUALITY_STEPS",
    "quality_code",
    "FORMAT_VERSION",
    "pack_stream",
    "parse_stream",
    "inspect_stream",
    "stream_arithmetic",
]

FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
IDENTITY_BYTES = 4
MAX_STRINGS = 64
FLAG_FIXED_POINT = 0x01
FLAG_SHAPE = 0x02
FLAG_STRINGS = 0x04
FLAG_LABELS = 0x08
FLAG_QUALITY = 0x10
FLAG_W8 = 0x20
_KNOWN_FLAGS = FLAG_FIXED_POINT | FLAG_SHAPE | FLAG_STRINGS | FLAG_LABELS | FLAG_QUALITY | FLAG_W8
#: a stored quality is ``code / QUALITY_STEPS`` with ``code`` in ``QUALITY_STEPS * (1..MAX_QUALITY)``
QUALITY_STEPS = 256
MAX_QUALITY = 64


def quality_code(quality: float) -> int:
    """The stored form of ``quality``: ``round(quality * 256)``; a CodecError outside ``[1, 64]``.

    ``quality_code(q) / 256`` is the quality a stream is coded at (exact in binary floating point).
    """
    try:
        q = float(quality)
    except (TypeError, ValueError):
        raise CodecError(f"quality must be a number, got {quality!r}") from None
    if not (math.isfinite(q) and 1 <= q <= MAX_QUALITY):
        raise CodecError(f"quality must be a number in [1, {MAX_QUALITY}], got {quality!r}")
    return int(round(q * QUALITY_STEPS))
#: model codes of format 2 (append only: a code, once written, keeps its meaning)
MODEL_CODES = (
    None,
    ("glic", "small"), ("gabic", "small"), ("glic", "tiny"), ("gabic", "tiny"), ("glic", "paper"),
    ("gabic", "paper"), ("wacnn", "tiny"), ("wacnn", "small"), ("wacnn", "paper"), ("cnn", "tiny"),
    ("cnn", "small"), ("cnn", "paper"),
)  # fmt: skip
_CODE_OF = {pair: i for i, pair in enumerate(MODEL_CODES) if pair is not None}
_PREFIX_V2 = MAGIC + bytes([KIND_RGB8, 2])


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
    if n < len(_PREFIX_V2):
        raise CorruptStreamError(f"truncated stream ({n} bytes)")
    if data[4] != KIND_RGB8:
        raise CorruptStreamError(f"unknown stream kind 0x{data[4]:02x} (this version reads 0x{KIND_RGB8:02x})")
    if data[5] not in READ_VERSIONS:
        raise CorruptStreamError(
            f"unsupported format version {data[5]} (this version of gnn_lic reads versions 1 and 2)"
        )
    if data[5] == 1:
        return parse_stream_v1(data)
    return _parse_v2(data)


def _model_field(model_name: str, model_size: str) -> Tuple[int, bytes]:
    code = _CODE_OF.get((model_name, model_size))
    if code is not None:
        out = bytearray()
        put_uvarint(out, code)
        return 0, bytes(out)
    out = bytearray()
    for label, what, limit in ((model_name, "model name", MAX_NAME_BYTES), (model_size, "model size", MAX_SIZE_BYTES)):
        raw = check_label(label, what, limit)
        put_uvarint(out, len(raw))
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
    quality: Optional[float] = None,
    w8: bool = False,
) -> bytes:
    """Assemble a version-2 stream (layout in the module docstring).

    ``w8`` (with ``fixed_point``): the entropy parameters use fixed-point scheme w8.
    ``shape=None`` means the model implies it from the image size; ``strings`` of the
    form ``[[bytes], ...]`` are stored flat, anything else as a tagged value.
    """
    if not isinstance(identity, (bytes, bytearray)) or len(identity) < IDENTITY_BYTES:
        raise CodecError(f"identity must be at least {IDENTITY_BYTES} bytes")
    check_dims(height, width)
    check_strings(strings)
    flags, model = _model_field(model_name, model_size)
    if w8 and not fixed_point:
        raise CodecError("scheme w8 is a fixed-point scheme: w8 needs fixed_point")
    flags |= FLAG_FIXED_POINT if fixed_point else 0
    flags |= FLAG_W8 if w8 else 0
    flat = _flat_strings(strings)
    flags |= FLAG_SHAPE if shape is not None else 0
    flags |= FLAG_STRINGS if flat is None else 0
    flags |= FLAG_QUALITY if quality is not None else 0
    out = bytearray(_PREFIX_V2)
    out.append(flags)
    out += model
    out += bytes(identity[:IDENTITY_BYTES])
    put_uvarint(out, height)
    put_uvarint(out, width)
    if quality is not None:
        put_uvarint(out, quality_code(quality))
    if shape is not None:
        encode_into(out, shape, 0, allow_bytes=False)
    if flat is None:
        encode_into(out, strings, 0, allow_bytes=True)
    else:
        put_uvarint(out, len(flat))
        for s_ in flat[:-1]:
            put_uvarint(out, len(s_))
        for s_ in flat:
            out += s_
    out += crc32_bytes(out)
    return bytes(out)


def _parse_v2(data: bytes) -> ParsedStream:
    n = len(data)
    min_bytes = len(_PREFIX_V2) + 1 + 1 + IDENTITY_BYTES + 2 + 1 + CRC_BYTES
    if n < min_bytes:
        raise CorruptStreamError(f"truncated stream ({n} bytes, a valid stream has at least {min_bytes})")
    stored_crc = struct.unpack(">I", data[n - CRC_BYTES :])[0]
    if data[n - CRC_BYTES :] != crc32_bytes(data[: n - CRC_BYTES]):
        raise CorruptStreamError("checksum mismatch: the file is corrupt or truncated")
    r = Reader(data, n - CRC_BYTES)
    try:
        r.pos = len(_PREFIX_V2)
        flags = r.byte("the flags")
        if flags & ~_KNOWN_FLAGS:
            raise ParseError(f"unknown flags 0x{flags:02x}")
        if flags & FLAG_W8 and not flags & FLAG_FIXED_POINT:
            raise ParseError("the w8 flag without the fixed-point flag")
        if flags & FLAG_LABELS:
            model_name = read_label(r, "model name", MAX_NAME_BYTES)
            model_size = read_label(r, "model size", MAX_SIZE_BYTES)
        else:
            code = r.uvarint("the model code")
            if not 1 <= code < len(MODEL_CODES):
                raise ParseError(f"unknown model code {code}")
            model_name, model_size = MODEL_CODES[code]
        identity = r.take(IDENTITY_BYTES, "the model identity")
        height = r.uvarint("the image height")
        width = r.uvarint("the image width")
        quality = None
        if flags & FLAG_QUALITY:
            code = r.uvarint("the quality")
            if not QUALITY_STEPS <= code <= QUALITY_STEPS * MAX_QUALITY:
                raise ParseError(f"quality code {code} is outside {QUALITY_STEPS}..{QUALITY_STEPS * MAX_QUALITY}")
            quality = code / QUALITY_STEPS
        header_bytes = r.pos
        shape = decode_from(r, 0, allow_bytes=False) if flags & FLAG_SHAPE else None
        if flags & FLAG_STRINGS:
            strings = decode_from(r, 0, allow_bytes=True)
            payload_bytes = check_decoded_strings(strings)
        else:
            count = r.uvarint("the string count")
            if not 1 <= count <= MAX_STRINGS:
                raise ParseError(f"string count {count} is outside 1..{MAX_STRINGS}")
            lengths = [r.count("a string length") for _ in range(count - 1)]
            if sum(lengths) > r.remaining:
                raise ParseError(f"string lengths {sum(lengths)} exceed the {r.remaining} bytes left")
            lengths.append(r.remaining - sum(lengths))
            strings = [[r.take(k, "a string")] for k in lengths]
            payload_bytes = sum(lengths)
    except ParseError as exc:
        raise CorruptStreamError(f"corrupt stream: {exc}") from None
    if r.remaining:
        raise CorruptStreamError(f"corrupt stream: {r.remaining} bytes after the strings")
    check_dims(height, width, CorruptStreamError)
    return ParsedStream(
        kind=data[4], version=2, model_name=model_name, model_size=model_size, config_hash=b"", weights_hash=b"",
        height=height, width=width, shape=shape, strings=strings, header_bytes=header_bytes,
        payload_bytes=payload_bytes, total_bytes=n, crc32=stored_crc, identity=bytes(identity),
        fixed_point=bool(flags & FLAG_FIXED_POINT), shape_implied=not flags & FLAG_SHAPE, quality=quality,
        w8=bool(flags & FLAG_W8),
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


def stream_arithmetic(parsed: ParsedStream) -> str:
    """The entropy arithmetic a parsed stream was coded with: ``"fixed"`` (scheme fx16),
    ``"fixed8"`` (scheme w8) or ``"float"`` (format 1, or format 2 without fixed point)."""
    if parsed.version < 2 or not parsed.fixed_point:
        return "float"
    return "fixed8" if parsed.w8 else "fixed"


def inspect_stream(data: bytes) -> dict:
    """Validate a stream without a model and return its header fields as a JSON-able dict.

    Keys: ``format``, ``kind``, ``version``, ``model_name``, ``model_size``,
    ``config_hash`` and ``weights_hash`` (format 1: hex of the stored 16-byte prefixes;
    format 2: empty), ``identity`` (format 2: hex of the stored identity prefix),
    ``fixed_point``, ``arithmetic`` (``"fixed"``: scheme fx16, ``"fixed8"``: scheme w8,
    ``"float"``), ``quality`` (None: a single-rate model), ``overhead_bytes`` (``total_bytes - payload_bytes``),
    ``height``, ``width``, ``shape`` (lists instead of tuples), ``strings_layout`` (the
    nesting of the entropy-coded strings with each string replaced by its length),
    ``num_strings``, ``payload_bytes``, ``header_bytes`` (bytes before the shape),
    ``total_bytes`` and ``crc32`` (hex).
    """
    p = parse_stream(data)
    return {
        "format": MAGIC.decode("ascii"),
        "kind": KIND_NAMES.get(p.kind, f"0x{p.kind:02x}"),
        "version": p.version,
        "model_name": p.model_name,
        "model_size": p.model_size,
        "config_hash": p.config_hash.hex(),
        "weights_hash": p.weights_hash.hex(),
        "identity": p.identity.hex(),
        "fixed_point": p.fixed_point,
        "arithmetic": stream_arithmetic(p),
        "quality": p.quality,
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
