"""Variable-rate streams: the quality header field, coding at the stored quality, refusals."""

import struct
import zlib

import numpy as np
import pytest
import torch

from gnn_lic.codec import decode_image, encode_image
from gnn_lic.codec.container import QUALITY_STEPS, inspect_stream, pack_stream, parse_stream, quality_code
from gnn_lic.errors import CodecError, CorruptStreamError
from gnn_lic.models import create_model

LAMBDAS = (0.002, 0.008, 0.032)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(3)
    model = create_model("gabic", size="tiny", rate_lambdas=LAMBDAS)
    with torch.no_grad():  # an untrained model's latents round to almost nothing: spread the levels apart
        model.gain.log_gain.copy_(torch.tensor([0.0, 2.0, 4.0])[:, None].expand_as(model.gain.log_gain))
        model.gain.log_inverse_gain.copy_(-model.gain.log_gain)
    model.update(force=True)
    return model.eval()


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)


def test_quality_round_trip_and_rate_order(net, image):
    sizes = []
    for quality in (1, 2, 3):
        data = encode_image(net, image, quality=quality)
        assert inspect_stream(data)["quality"] == quality
        assert decode_image(net, data).shape == image.shape
        sizes.append(len(data))
    assert sizes[0] <= sizes[1] <= sizes[2] and sizes[0] < sizes[2]
    assert inspect_stream(encode_image(net, image))["quality"] == 3  # the top level by default


def test_a_real_quality_is_coded_on_the_stored_grid(net, image):
    data = encode_image(net, image, quality=2.3)
    snapped = round(2.3 * QUALITY_STEPS) / QUALITY_STEPS
    assert parse_stream(data).quality == snapped
    assert data == encode_image(net, image, quality=snapped)  # the encoder coded at the stored value
    out = decode_image(net, data)
    ref = net.decompress(*(lambda c: (c["strings"], c["shape"]))(
        net.compress(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, quality=snapped)))["x_hat"]
    ref = ref[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(out, ref)


def test_qualities_outside_the_model_are_refused(net, image):
    with pytest.raises(CodecError, match=r"\[1, 3\]"):
        encode_image(net, image, quality=3.5)
    with pytest.raises(CodecError, match=r"\[1, 64\]"):
        quality_code(0.5)
    single = create_model("gabic", size="tiny")
    single.update(force=True)
    with pytest.raises(CodecError, match="one rate"):
        encode_image(single, image, quality=2)


def _with_quality_code(data: bytes, code: int) -> bytes:
    """Rewrite the quality field (one byte for codes < 128... here 2-byte uvarints) and the checksum."""
    p = parse_stream(data)
    old = quality_code(p.quality)
    enc = lambda v: bytes([(v & 0x7F) | 0x80, v >> 7])  # noqa: E731 - two-byte uvarint (128 <= v < 16384)
    body = data[:-4].replace(enc(old), enc(code), 1)
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def test_corrupt_or_foreign_quality_fields_are_refused(net, image):
    data = encode_image(net, image, quality=2)
    with pytest.raises(CorruptStreamError, match="quality code"):
        parse_stream(_with_quality_code(data, 200))  # below 1 * 256
    with pytest.raises(CorruptStreamError, match="quality 4.0 is not one of"):
        decode_image(net, _with_quality_code(data, 4 * QUALITY_STEPS))
    p = parse_stream(data)
    no_quality = pack_stream(model_name=p.model_name, model_size=p.model_size, identity=p.identity,
                             fixed_point=p.fixed_point, w8=p.w8, height=p.height, width=p.width, shape=None,
                             strings=p.strings)
    with pytest.raises(CorruptStreamError, match="quality None"):
        decode_image(net, no_quality)


def test_command_line_codes_a_variable_rate_checkpoint_at_the_asked_quality(net, image, tmp_path, capsys):
    from PIL import Image

    import gnn_lic.__main__ as cli
    from gnn_lic.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "vr.pt", net)
    Image.fromarray(image).save(tmp_path / "in.png")
    for quality in ("1", "2.5"):
        out = tmp_path / f"q{quality}.glic"
        assert cli.main(["compress", str(tmp_path / "in.png"), str(out), "-c", str(ckpt), "--quality", quality]) == 0
        assert f"quality {float(quality):g}," in capsys.readouterr().out
        assert inspect_stream(out.read_bytes())["quality"] == float(quality)
        assert cli.main(["decompress", str(out), str(tmp_path / f"q{quality}.png"), "-c", str(ckpt)]) == 0
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"q{quality}.png")),
                              decode_image(net, out.read_bytes()))
    assert cli.main(["compress", str(tmp_path / "in.png"), str(tmp_path / "x.glic"), "-c", str(ckpt),
                     "--quality", "7"]) == 2
    assert "[1, 3]" in capsys.readouterr().err
