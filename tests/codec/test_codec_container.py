"""The .glic container: layout, header fields and rejection of every corrupt input."""

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import codec_testmodels as cm  # noqa: E402

from gnn_lic.codec import (  # noqa: E402
    CodecError,
    CorruptStreamError,
    decode_image,
    encode_image,
    inspect_stream,
    model_fingerprint,
)
from gnn_lic.codec.container import FLAG_W8, pack_stream, parse_stream  # noqa: E402
from gnn_lic.codec.container_v1 import pack_stream_v1  # noqa: E402
from gnn_lic.codec.wire import decode_value, encode_value  # noqa: E402
from gnn_lic.codec.fingerprint import config_hash, identity_digest  # noqa: E402


@pytest.fixture(scope="module")
def net():
    return cm.make()


@pytest.fixture(scope="module")
def image():
    return np.random.RandomState(1).randint(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def stream(net, image):
    return encode_image(net, image)


class _Spy:
    """Counts calls to the model's decompress (must stay 0 for corrupt input)."""

    def __init__(self, net):
        self.calls = 0
        self.net = net
        self.orig = net.decompress

    def __enter__(self):
        def spy(*a, **k):
            self.calls += 1
            return self.orig(*a, **k)

        self.net.decompress = spy
        return self

    def __exit__(self, *exc):
        del self.net.decompress


def _uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _with_crc(body):
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def _header(name=b"codec_test_hyper", size=b"tiny", h=5, w=7, version=1, kind=1):
    return (
        b"GLIC" + bytes([kind, version]) + _uvarint(len(name)) + name + _uvarint(len(size)) + size
        + b"\x11" * 16 + b"\x22" * 16 + _uvarint(h) + _uvarint(w)
    )


# ------------------------------------------------------------------------------ values


def test_tagged_values_roundtrip_and_keep_types():
    values = [
        None, True, False, 0, 1, -1, 300, 2**63 - 1, -(2**63), 1.5, -0.0, "", "héllo", b"", b"\x00\xff" * 9,
        [], (), {}, [1, [2, (3,)], {"a": [b"x", None], "b": (True, 2.5)}],
    ]
    for v in values:
        back = decode_value(encode_value(v))
        assert back == v and type(back) is type(v), v
    assert decode_value(encode_value(torch.Size([1, 2, 3]))) == (1, 2, 3)
    assert decode_value(encode_value(np.int64(-5))) == -5
    assert type(decode_value(encode_value([(1, 2)]))[0]) is tuple
    assert encode_value(7) == b"i\x0e"  # zig-zag varint
    assert encode_value(-1) == b"i\x01"
    assert encode_value([b"ab"]) == b"l\x01b\x02ab"


@pytest.mark.parametrize("bad", [object(), 2**64, {1: 2}, torch.zeros(3), [[[set()]]]])
def test_unserialisable_values_are_refused(bad):
    with pytest.raises(CodecError):
        encode_value(bad)


def test_bytes_not_allowed_in_shape():
    with pytest.raises(CodecError):
        encode_value([b"x"], allow_bytes=False)
    with pytest.raises(CorruptStreamError):
        decode_value(b"l\x01b\x01x", allow_bytes=False)


# ------------------------------------------------------------------------------ layout


def test_header_fields(net, image, stream):
    info = inspect_stream(stream)
    assert info["format"] == "GLIC" and info["version"] == 2 and info["kind"] == "rgb8-image"
    assert info["model_name"] == cm.HYPER and info["model_size"] == "tiny"
    assert (info["height"], info["width"]) == image.shape[:2]
    assert info["identity"] == identity_digest(net, "float")[:4].hex() and info["fixed_point"] is False
    assert info["total_bytes"] == len(stream)
    assert info["crc32"] == f"{zlib.crc32(stream[:-4]) & 0xFFFFFFFF:08x}"
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ref = net.compress(x)
    assert info["strings_layout"] == [[len(s) for s in group] for group in ref["strings"]]
    assert info["payload_bytes"] == sum(len(s) for group in ref["strings"] for s in group)
    assert info["overhead_bytes"] == len(stream) - info["payload_bytes"]
    assert info["num_strings"] == 2
    # a test model does not imply its shape: it is stored
    assert info["shape"] == {"latent": list(ref["shape"]["latent"]), "hw": [5, 7]}
    assert parse_stream(stream).strings == ref["strings"]


def test_layout_byte_by_byte(net, stream):
    name, size = cm.HYPER.encode(), b"tiny"
    assert stream[:7] == b"GLIC\x01\x02\x0a"  # kind, version, flags: explicit shape + labels
    pos = 7
    assert stream[pos] == len(name) and stream[pos + 1 : pos + 1 + len(name)] == name
    pos += 1 + len(name)
    assert stream[pos] == len(size) and stream[pos + 1 : pos + 5] == size
    pos += 1 + len(size)
    assert stream[pos : pos + 4] == identity_digest(net, "float")[:4]
    pos += 4
    assert stream[pos : pos + 2] == b"\x05\x07"  # height, width
    pos += 2
    assert inspect_stream(stream)["header_bytes"] == pos
    assert stream[pos : pos + 1] == b"m"  # the shape dict
    p = parse_stream(stream)
    y, z = p.strings[0][0], p.strings[1][0]
    tail = b"\x02" + _uvarint(len(y)) + y + z  # count, length of all but the last, strings
    assert stream[-4 - len(tail) : -4] == tail
    assert struct.unpack(">I", stream[-4:])[0] == zlib.crc32(stream[:-4]) & 0xFFFFFFFF


def test_pack_rejects_bad_fields():
    ok = dict(model_name="m", model_size="tiny", identity=b"\0" * 4, fixed_point=False,
              height=1, width=1, shape=[1], strings=[[b"x"]])
    assert parse_stream(pack_stream(**ok)).strings == [[b"x"]]
    assert parse_stream(pack_stream(**{**ok, "strings": [[b"x", b"y"]]})).strings == [[b"x", b"y"]]  # tagged
    for key, bad in [("model_name", ""), ("model_name", "a\nb"), ("model_size", "é"), ("identity", b"\0"),
                     ("height", 0), ("width", 2**21), ("strings", b"x"), ("strings", [[1]]), ("shape", [b"x"])]:
        with pytest.raises(CodecError):
            pack_stream(**{**ok, key: bad})
    ok1 = dict(model_name="m", model_size="tiny", config_hash=b"\0" * 16, weights_hash=b"\0" * 16,
               height=1, width=1, shape=[1], strings=[[b"x"]])
    assert parse_stream(pack_stream_v1(**ok1)).strings == [[b"x"]]


def test_shipped_model_codes_keep_the_overhead_small():
    data = pack_stream(model_name="glic", model_size="small", identity=b"\1" * 32, fixed_point=True,
                       height=512, width=768, shape=None, strings=[[b"y" * 7000], [b"z" * 200]])
    p = parse_stream(data)
    assert (p.model_name, p.model_size, p.fixed_point, p.shape_implied) == ("glic", "small", True, True)
    assert p.strings == [[b"y" * 7000], [b"z" * 200]]
    assert len(data) - p.payload_bytes <= 32
    assert data[6] == 0x01 and data[7] == 1  # flags: fixed point; model code 1


def test_format_1_streams_still_parse(net, image):
    """A stream written by the previous release: parsed, and decoded through the float path."""
    from gnn_lic.codec.image_codec import model_identity

    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        out = net.compress(x)
    name, size, cfg, weights = model_identity(net)
    old = pack_stream_v1(model_name=name, model_size=size, config_hash=cfg, weights_hash=weights,
                         height=5, width=7, shape=out["shape"], strings=out["strings"])
    assert inspect_stream(old)["version"] == 1
    assert np.array_equal(decode_image(net, old), decode_image(net, encode_image(net, image)))


# -------------------------------------------------------------------------- corruption


def test_every_truncation_is_rejected(net, stream):
    with _Spy(net) as spy:
        for n in range(len(stream)):
            with pytest.raises(CorruptStreamError):
                inspect_stream(stream[:n])
            with pytest.raises(CorruptStreamError):
                decode_image(net, stream[:n])
    assert spy.calls == 0


def test_every_byte_flip_is_rejected(net, stream):
    with _Spy(net) as spy:
        for i in range(len(stream)):
            for mask in (0x01, 0x80, 0xFF):
                bad = bytearray(stream)
                bad[i] ^= mask
                with pytest.raises(CorruptStreamError):
                    decode_image(net, bytes(bad))
    assert spy.calls == 0
    assert decode_image(net, stream).shape == (5, 7, 3)  # the intact stream still decodes


def test_random_empty_and_foreign_input(net, stream):
    rng = np.random.RandomState(0)
    with pytest.raises(CorruptStreamError, match="empty"):
        inspect_stream(b"")
    with pytest.raises(CorruptStreamError, match="magic"):
        inspect_stream(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with _Spy(net) as spy:
        for n in list(range(1, 80)) + [1000, 5000]:
            with pytest.raises(CorruptStreamError):
                decode_image(net, rng.bytes(n))
            with pytest.raises(CorruptStreamError):  # right magic, kind and version, random rest
                decode_image(net, stream[:6] + rng.bytes(n))
    assert spy.calls == 0


def test_trailing_garbage(stream):
    with pytest.raises(CorruptStreamError, match="checksum"):
        inspect_stream(stream + b"\x00")
    with pytest.raises(CorruptStreamError):
        inspect_stream(stream + stream)


def test_unknown_version_and_kind(stream):
    with pytest.raises(CorruptStreamError, match="version 3"):
        inspect_stream(_with_crc(stream[:5] + b"\x03" + stream[6:-4]))
    with pytest.raises(CorruptStreamError, match="kind"):
        inspect_stream(_with_crc(stream[:4] + b"\x07" + stream[5:-4]))


@pytest.mark.parametrize(
    "tail",
    [
        b"l" + _uvarint(2**60),  # huge list length
        b"m\x00b" + _uvarint(2**62) + b"abc",  # huge byte-string length
        b"l" * 5000 + b"\x01" * 5000,  # absurd nesting
        b"m\x00l\x01s\x02\xff\xfe",  # invalid UTF-8
        b"m\x00l\x01\x99",  # unknown tag
        b"m\x00l\x01i\x80\x00",  # non-minimal varint
        b"m\x00l\x01i" + b"\xff" * 11,  # varint too long
        b"m\x00b\x01x",  # strings must be a list, not bytes
        b"m\x00l\x01i\x02",  # strings may not contain ints
        b"m\x02\x01ai\x00\x01ai\x00l\x00",  # duplicate dict key
        b"b\x01xl\x00",  # bytes in the shape
    ],
)
def test_crafted_payloads_with_valid_checksum_are_rejected(tail):
    with pytest.raises(CorruptStreamError):
        inspect_stream(_with_crc(_header() + tail))


@pytest.mark.parametrize(
    "header",
    [
        _header(h=0), _header(w=2**20 + 1), _header(name=b""), _header(name=b"a\x00b"), _header(size=b"x" * 40),
    ],
)
def test_crafted_headers_with_valid_checksum_are_rejected(header):
    with pytest.raises(CorruptStreamError):
        inspect_stream(_with_crc(header + b"m\x00l\x00"))
    assert inspect_stream(_with_crc(_header() + b"m\x00l\x00"))["num_strings"] == 0  # control


def test_non_bytes_input_is_a_type_error():
    with pytest.raises(TypeError):
        inspect_stream("GLIC")


def test_evaluation_reports_file_and_payload_bpp_side_by_side(net, image):
    from gnn_lic.evaluation.evaluate import evaluate_model

    res = evaluate_model(net, [("a", image)])
    row = res["per_image"]["a"]
    data = encode_image(net, image)
    assert row["bytes"] == len(data) and row["payload_bytes"] == inspect_stream(data)["payload_bytes"]
    assert row["payload-bpp"] == pytest.approx(row["payload_bytes"] * 8 / 35) and row["payload-bpp"] < row["bpp"]
    assert res["payload-bpp"] == row["payload-bpp"]


def test_the_w8_flag_names_the_fixed_point_scheme():
    ok = dict(model_name="m", model_size="tiny", identity=b"\0" * 4, height=1, width=1, shape=[1], strings=[[b"x"]])
    arithmetic = {(False, False): "float", (True, False): "fixed", (True, True): "fixed8"}
    for (fixed, w8), name in arithmetic.items():
        data = pack_stream(**ok, fixed_point=fixed, w8=w8)
        assert inspect_stream(data)["arithmetic"] == name
    with pytest.raises(CodecError, match="w8 needs fixed_point"):
        pack_stream(**ok, fixed_point=False, w8=True)
    # the flag alone, with a valid checksum: refused as corrupt
    data = bytearray(pack_stream(**ok, fixed_point=False))
    data[6] |= FLAG_W8
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])) & 0xFFFFFFFF)
    with pytest.raises(CorruptStreamError, match="w8 flag without the fixed-point flag"):
        parse_stream(bytes(data))
