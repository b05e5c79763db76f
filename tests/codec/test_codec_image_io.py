"""read_image conversions and atomic, no-overwrite writes."""

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from gnn_lic.codec import CodecError, ImageReadError, OutputExistsError, read_image, write_bytes, write_image  # noqa: E402
import gnn_lic.utils as utils  # noqa: E402 - the one atomic writer


def _rgb(h=5, w=7, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _png16(path, arr, color):
    """Write a 16-bit PNG by hand (Pillow cannot write 16-bit colour)."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w = arr.shape[:2]
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if color else 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _leftovers(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


def test_rgb_png_is_read_exactly_without_notice(tmp_path, capsys):
    img = _rgb()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and np.array_equal(out, img) and out.flags.writeable
    assert capsys.readouterr().err == ""


def test_one_pixel_image(tmp_path, capsys):
    img = _rgb(1, 1)
    Image.fromarray(img).save(tmp_path / "p.png")
    assert np.array_equal(read_image(str(tmp_path / "p.png")), img)


def _one_notice(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: "), err
    for word in words:
        assert word in err, err
    return err


def test_grayscale(tmp_path, capsys):
    g = _rgb()[:, :, 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (5, 7, 3) and all(np.array_equal(out[:, :, c], g) for c in range(3))
    _one_notice(capsys, "grayscale", "RGB")


def test_rgba_and_la_drop_alpha(tmp_path, capsys):
    img = _rgb()
    rgba = np.concatenate([img, np.full((5, 7, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), img)
    _one_notice(capsys, "RGBA", "alpha")
    la = np.stack([img[:, :, 0], img[:, :, 1]], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    assert np.array_equal(out[:, :, 2], img[:, :, 0])
    _one_notice(capsys, "LA", "alpha")


def test_palette(tmp_path, capsys):
    img = _rgb()
    pal = Image.fromarray(img).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    expected = np.asarray(pal.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "p.png"), expected)
    _one_notice(capsys, "palette")
    pal.save(tmp_path / "pt.png", transparency=0)
    assert np.array_equal(read_image(tmp_path / "pt.png"), expected)
    _one_notice(capsys, "palette", "transparency")


def test_16bit_grayscale_is_rounded(tmp_path, capsys):
    v = np.array([[0, 128, 129, 257, 32896], [65535, 65407, 1000, 40000, 12345]], dtype=np.uint16)
    _png16(tmp_path / "g16.png", v, color=False)
    out = read_image(tmp_path / "g16.png")
    expected = np.round(v.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(out[:, :, 0], expected) and np.array_equal(out[:, :, 2], expected)
    _one_notice(capsys, "16-bit")


def test_16bit_rgb(tmp_path, capsys):
    v = np.random.RandomState(0).randint(0, 65536, (3, 4, 3)).astype(np.uint16)
    _png16(tmp_path / "c16.png", v, color=True)
    out = read_image(tmp_path / "c16.png")
    assert out.shape == (3, 4, 3)
    assert np.abs(out.astype(int) - (v.astype(int) * 255 / 65535)).max() <= 1
    _one_notice(capsys, "16-bit", "8 bits")


def test_animated_gif_uses_first_frame(tmp_path, capsys):
    frames = [Image.fromarray(np.full((4, 4, 3), c, np.uint8)) for c in (10, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    out = read_image(tmp_path / "a.gif")
    assert out.shape == (4, 4, 3) and abs(int(out[0, 0, 0]) - 10) <= 2
    _one_notice(capsys, "first of 2 frames")


@pytest.mark.parametrize("content", [b"hello world\n", b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30])
def test_non_images_raise_one_line_error(tmp_path, content):
    p = tmp_path / "x.png"
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        read_image(p)
    assert "\n" not in str(err.value) and "x.png" in str(err.value)


def test_truncated_png(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "t.png")


def test_missing_folder_and_float_images(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)
    Image.fromarray(np.zeros((3, 3), np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="floating"):
        read_image(tmp_path / "f.tif")


def test_write_image_roundtrip_and_no_overwrite(tmp_path):
    img, other = _rgb(), _rgb(seed=1)
    out = tmp_path / "o.png"
    write_image(out, img)
    assert np.array_equal(np.asarray(Image.open(out)), img)
    with pytest.raises(OutputExistsError):
        write_image(out, other)
    assert np.array_equal(np.asarray(Image.open(out)), img)  # untouched
    write_image(out, other, force=True)
    assert np.array_equal(np.asarray(Image.open(out)), other)
    assert _leftovers(tmp_path) == []
    assert (os.stat(out).st_mode & 0o777) != 0o600  # umask-based permissions, not mkstemp's


def test_write_bytes_errors_leave_nothing(tmp_path, monkeypatch):
    with pytest.raises(CodecError, match="does not exist"):
        write_bytes(tmp_path / "missing" / "x.glic", b"abc")
    with pytest.raises(CodecError, match="folder"):
        write_bytes(tmp_path, b"abc")
    with pytest.raises(CodecError):
        write_image(tmp_path / "bad.png", np.zeros((4, 4), np.uint8))
    assert not (tmp_path / "bad.png").exists()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", broken_fsync)
    with pytest.raises(CodecError, match="No space"):
        write_bytes(tmp_path / "x.glic", b"abc" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_race_is_detected(tmp_path, monkeypatch):
    """The file appears between the early check and the final move: still refused."""
    target = tmp_path / "x.glic"
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_bytes(b"theirs")
        return real_link(src, dst)

    monkeypatch.setattr(utils.os, "link", racing_link)
    with pytest.raises(OutputExistsError):
        write_bytes(target, b"ours")
    assert target.read_bytes() == b"theirs" and _leftovers(tmp_path) == []
