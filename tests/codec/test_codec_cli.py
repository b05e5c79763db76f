"""python -m gnn_lic compress / decompress / info, in subprocesses and in-process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import codec_testmodels as cm  # noqa: E402

import gnn_lic.__main__ as cli  # noqa: E402
from gnn_lic.codec import decode_image, encode_image, inspect_stream, read_image  # noqa: E402
from gnn_lic.codec.fingerprint import identity_digest  # noqa: E402
from gnn_lic.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gnn_lic.models.zoo import WEIGHTS_DIR_ENV  # noqa: E402

H, W = 32, 48


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    net = cm.reseeded(3)
    save_checkpoint(d / "model.pth.tar", net, step=1)
    other = cm.reseeded(4)
    save_checkpoint(d / "other.pt", other)
    img = np.random.RandomState(0).randint(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(img).save(d / "in.png")
    (d / "notes.txt").write_text("this is not an image\n")
    return d


def _env(plugins):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("GNN_LIC_PLUGINS", None)
    if plugins:  # registers the test models in the subprocess (importing compressai takes seconds)
        env["GNN_LIC_PLUGINS"] = "codec_plugin"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("GNN_LIC_DEBUG", None)
    return env


def _run(cwd, *args, plugins=True):
    return subprocess.run(
        [sys.executable, "-m", "gnn_lic", *args], cwd=cwd, env=_env(plugins), capture_output=True, text=True,
        timeout=120,
    )


def _main(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(err):
    assert err.count("\n") == 1 and err.startswith("gnn_lic: error: "), err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- subprocess


def test_subprocess_compress_info_and_deterministic_decompress(work):
    r = _run(work, "compress", "in.png", "out.glic", "--checkpoint", "model.pth.tar")
    assert r.returncode == 0, r.stderr
    size = (work / "out.glic").stat().st_size
    assert r.stdout.count("\n") == 1
    assert f"{size} bytes" in r.stdout and f"{size * 8 / (H * W):.4f} bpp" in r.stdout and "encode" in r.stdout
    assert r.stderr == ""

    net, _ = load_checkpoint(work / "model.pth.tar")
    data = (work / "out.glic").read_bytes()
    assert data == encode_image(net, read_image(work / "in.png"))  # same bytes as in this process

    r = _run(work, "info", "out.glic", plugins=False)  # needs no model
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert fields["model_name"] == cm.HYPER and fields["model_size"] == "tiny"
    assert (fields["height"], fields["width"]) == (str(H), str(W))
    assert fields["identity"] == identity_digest(net, "float")[:4].hex()  # identity agrees across processes
    assert int(fields["total_bytes"]) == size

    outs = []
    for name in ("a.png", "b.png"):
        r = _run(work, "decompress", "out.glic", name, "--checkpoint", "model.pth.tar")
        assert r.returncode == 0, r.stderr
        assert "decode" in r.stdout and r.stdout.count("\n") == 1
        outs.append((work / name).read_bytes())
    assert outs[0] == outs[1]
    assert np.array_equal(np.asarray(Image.open(work / "a.png")), decode_image(net, data))


def test_subprocess_text_file_fails_cleanly(work):
    r = _run(work, "compress", "notes.txt", "x.glic", "--checkpoint", "model.pth.tar", plugins=False)
    assert r.returncode == 2
    _one_error(r.stderr)
    assert "notes.txt" in r.stderr and r.stdout == ""
    assert not (work / "x.glic").exists()


def test_headers_and_bad_files_need_no_pytorch(work):
    """info reads a header, and decompress refuses a missing or corrupt file, without importing PyTorch (or the
    models and CompressAI behind it): no seconds of imports before the answer."""
    r = _run(work, "compress", "in.png", "h.glic", "--checkpoint", "model.pth.tar")
    assert r.returncode == 0, r.stderr
    (work / "bad.glic").write_bytes((work / "h.glic").read_bytes()[:-3])
    blocked = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'gnn_lic'; "
               "runpy.run_module('gnn_lic', run_name='__main__')")

    def run(*args):
        return subprocess.run([sys.executable, "-c", blocked, *args], cwd=work, env=_env(False), capture_output=True,
                              text=True, timeout=120)

    r = run("info", "h.glic")
    assert r.returncode == 0, r.stderr
    assert f"total_bytes: {(work / 'h.glic').stat().st_size}" in r.stdout
    for name, words in (("missing.glic", "'missing.glic' does not exist"), ("bad.glic", "corrupt or truncated")):
        r = run("decompress", name, "x.png", "--checkpoint", "model.pth.tar")
        assert r.returncode == 2 and words in _one_error(r.stderr)
    r = run("compress", "in.png", "h.glic", "--checkpoint", "model.pth.tar")  # refused before any model is loaded
    assert r.returncode == 2 and "already exists" in _one_error(r.stderr)
    r = run("compress", "nothere.png", "z.glic", "--checkpoint", "model.pth.tar")
    assert r.returncode == 2 and "nothere.png" in _one_error(r.stderr)
    assert not (work / "x.png").exists() and not (work / "z.glic").exists()
    r = run("decompress", "h.glic", "y.png", "--checkpoint", "model.pth.tar")  # a real job does import it
    assert r.returncode == 1 and "torch" in r.stderr


# ---------------------------------------------------------------------------- in-process


def test_inprocess_roundtrip_and_force(work, capsys, tmp_path):
    ck = str(work / "model.pth.tar")
    out, png = str(tmp_path / "o.glic"), str(tmp_path / "o.png")
    code, stdout, _ = _main(capsys, "compress", str(work / "in.png"), out, "-c", ck, "--model", cm.HYPER, "--size", "tiny")
    assert code == 0 and "bpp" in stdout
    before = Path(out).read_bytes()
    code, _, err = _main(capsys, "compress", str(work / "in.png"), out, "-c", ck)
    assert code == 2 and "already exists" in _one_error(err)
    assert Path(out).read_bytes() == before
    code, _, _ = _main(capsys, "compress", str(work / "in.png"), out, "-c", ck, "--force")
    assert code == 0 and Path(out).read_bytes() == before
    assert _main(capsys, "decompress", out, png, "-c", ck)[0] == 0
    code, _, err = _main(capsys, "decompress", out, png, "-c", ck)
    assert code == 2 and "already exists" in _one_error(err)
    assert _main(capsys, "decompress", out, png, "-c", ck, "-f")[0] == 0
    code, stdout, _ = _main(capsys, "info", out, "--json")
    assert code == 0 and json.loads(stdout)["model_name"] == cm.HYPER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.glic", "o.png"]  # no temporary files


def test_decoding_errors_leave_no_output(work, capsys, tmp_path):
    ck = str(work / "model.pth.tar")
    stream = tmp_path / "s.glic"
    assert _main(capsys, "compress", str(work / "in.png"), str(stream), "-c", ck)[0] == 0
    data = stream.read_bytes()
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    (tmp_path / "bad.glic").write_bytes(bytes(bad))
    (tmp_path / "cut.glic").write_bytes(data[:-3])
    (tmp_path / "rand.glic").write_bytes(np.random.RandomState(0).bytes(200))
    (tmp_path / "empty.glic").write_bytes(b"")
    for name in ("bad.glic", "cut.glic", "rand.glic", "empty.glic"):
        code, _, err = _main(capsys, "decompress", str(tmp_path / name), str(tmp_path / "x.png"), "-c", ck)
        assert code == 2, name
        _one_error(err)
        code, _, err = _main(capsys, "info", str(tmp_path / name))
        assert code == 2, name
        _one_error(err)
    code, _, err = _main(capsys, "decompress", str(stream), str(tmp_path / "x.png"), "-c", str(work / "other.pt"))
    assert code == 2 and "weights differ" in _one_error(err)
    assert not (tmp_path / "x.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_model_selection_errors(work, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "no_weights"))
    img, ck, out = str(work / "in.png"), str(work / "model.pth.tar"), str(tmp_path / "o.glic")
    cases = [
        (("compress", img, out, "-c", ck, "--model", cm.FACT), "does not match"),
        (("compress", img, out, "-c", ck, "--size", "small"), "does not match"),
        (("compress", img, out, "--model", "no_such_model"), "unknown model"),
        (("compress", img, out, "--model", cm.HYPER, "--size", "huge"), "unknown size"),
        (("compress", img, out, "--model", cm.HYPER), "no trained weights are shipped for model"),
        (("compress", img, out, "-c", ck, "--quality", "3"), "serves one rate"),
        (("compress", img, out), "--checkpoint"),
        (("compress", str(work / "missing.png"), out, "-c", ck), "does not exist"),
        (("compress", str(work / "notes.txt"), out, "-c", ck), "notes.txt"),
        (("compress", img, str(tmp_path / "nodir" / "o.glic"), "-c", ck), "does not exist"),
        (("compress", img, out, "-c", str(work / "missing.pt")), "does not exist"),
        (("compress", img, out, "-c", str(work / "notes.txt")), "not a PyTorch checkpoint"),
        (("compress", img, out, "-c", ck, "--device", "warp"), "device"),
        (("decompress", str(work / "missing.glic"), str(tmp_path / "o.png")), "does not exist"),
        (("info", str(work / "in.png")), "bad magic"),
    ]
    for args, words in cases:
        code, stdout, err = _main(capsys, *args)
        assert code == 2, args
        assert words in _one_error(err), (args, err)
    assert list(tmp_path.iterdir()) == []


def test_plain_state_dict_checkpoint(work, capsys, tmp_path):
    import torch

    torch.save(cm.make().state_dict(), tmp_path / "sd.pt")
    code, _, err = _main(capsys, "compress", str(work / "in.png"), str(tmp_path / "o"), "-c", str(tmp_path / "sd.pt"))
    assert code == 2 and "plain state_dict" in _one_error(err)


def test_pretrained_path_and_conversion_notice(work, capsys, tmp_path, monkeypatch, ship):
    weights = tmp_path / "weights"
    net, _ = load_checkpoint(work / "model.pth.tar")
    ship(save_checkpoint(weights / "h.pt", net), cm.HYPER, "tiny")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights))
    gray = np.random.RandomState(1).randint(0, 256, (7, 9), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    code, stdout, err = _main(capsys, "compress", str(tmp_path / "g.png"), str(tmp_path / "g.glic"), "-m", cm.HYPER, "-s", "tiny")
    assert code == 0 and err.startswith("note: ") and "grayscale" in err and err.count("\n") == 1
    assert inspect_stream((tmp_path / "g.glic").read_bytes())["identity"] == identity_digest(net, "float")[:4].hex()
    code, _, _ = _main(capsys, "decompress", str(tmp_path / "g.glic"), str(tmp_path / "g2.png"))
    assert code == 0
    expected = decode_image(net, (tmp_path / "g.glic").read_bytes())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g2.png")), expected)
    code, _, err = _main(capsys, "compress", str(work / "in.png"), str(tmp_path / "q.glic"), "-m", cm.HYPER,
                         "-s", "tiny", "--quality", "2")
    assert code == 2 and "at quality 2 (shipped qualities: 4)" in _one_error(err)


def test_decompress_finds_the_shipped_quality_of_a_stream(work, capsys, tmp_path, monkeypatch, ship):
    """Several qualities shipped: compress needs --quality, decompress finds it from the stream's identity."""
    weights = tmp_path / "weights"
    net, _ = load_checkpoint(work / "model.pth.tar")
    ship(save_checkpoint(weights / "h4.pt", net), cm.HYPER, "tiny", (4,))
    other = cm.reseeded(9)  # other weights, the same configuration
    ship(save_checkpoint(weights / "h2.pt", other), cm.HYPER, "tiny", (2,))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights))
    img, out = str(work / "in.png"), str(tmp_path / "o.glic")
    code, _, err = _main(capsys, "compress", img, out, "-m", cm.HYPER, "-s", "tiny")
    assert code == 2 and "qualities 2, 4; choose one" in _one_error(err)
    assert _main(capsys, "compress", img, out, "-m", cm.HYPER, "-s", "tiny", "-q", "4")[0] == 0
    assert _main(capsys, "decompress", out, str(tmp_path / "o.png"))[0] == 0
    expected = decode_image(net, (tmp_path / "o.glic").read_bytes())
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), expected)
    code, _, err = _main(capsys, "decompress", out, str(tmp_path / "p.png"), "-q", "2")
    assert code == 2 and "weights differ" in _one_error(err)


def test_usage_help_and_command_hook(capsys):
    for args in [(), ("compress",), ("frobnicate",), ("compress", "a", "b", "--bogus")]:
        code, _, err = _main(capsys, *args)
        assert code == 2, args
        _one_error(err)
    code, out, _ = _main(capsys, "--help")
    assert code == 0 and "compress" in out and "decompress" in out and "info" in out

    def add(p):
        p.add_argument("--fail", action="store_true")

    def run(args):
        if args.fail:
            raise RuntimeError("boom\nsecond line")
        print("hello")
        return 0

    cli.register_command("hello", "test command", add, run)
    try:
        code, out, _ = _main(capsys, "hello")
        assert code == 0 and out == "hello\n"
        code, _, err = _main(capsys, "hello", "--fail")
        assert code == 1 and "internal error" in _one_error(err) and "boom second line" in err
        with pytest.raises(RuntimeError):
            cli.main(["--debug", "hello", "--fail"])
    finally:
        del cli.COMMANDS["hello"]


def test_max_memory_refuses_what_cannot_fit_and_changes_no_bit(work, capsys, tmp_path):
    ck = str(work / "model.pth.tar")
    src, out, png = str(work / "in.png"), str(tmp_path / "o.glic"), str(tmp_path / "o.png")
    from gnn_lic.codec import budget
    from gnn_lic.codec.budget import parse_memory

    assert parse_memory("8G") == 8 << 30 and parse_memory("512 MiB") == 512 << 20
    assert parse_memory("1.5g") == 3 << 29 and parse_memory("2000") == 2000
    code, _, err = _main(capsys, "compress", src, out, "-c", ck, "--max-memory", "1M")
    assert code == 2 and "needs about" in _one_error(err) and "--max-memory allows" in err
    assert not Path(out).exists()
    code, _, err = _main(capsys, "compress", src, out, "-c", ck, "--max-memory", "lots")
    assert code == 2 and "not a size" in _one_error(err)
    assert _main(capsys, "compress", src, out, "-c", ck)[0] == 0
    plain = Path(out).read_bytes()
    tight = budget.process_memory("VmRSS") + budget.CODING_BYTES + (256 << 20)  # enough, without the headroom
    assert _main(capsys, "compress", src, out, "-c", ck, "-f", "--max-memory", str(tight))[0] == 0
    assert Path(out).read_bytes() == plain
    code, _, err = _main(capsys, "decompress", out, png, "-c", ck, "--max-memory", "1M")
    assert code == 2 and "needs about" in _one_error(err) and not Path(png).exists()
    assert _main(capsys, "decompress", out, png, "-c", ck, "--max-memory", "64G")[0] == 0


def test_memory_estimates_grow_with_the_image():
    from gnn_lic.models import create_model

    for name in ("glic", "gabic", "wacnn"):
        net = create_model(name, size="tiny")
        small, large = net.memory_estimate(64, 64), net.memory_estimate(640, 640)
        weights = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
        assert weights < small < large and abs((large - weights) - 100 * (small - weights)) <= 100


def test_large_images_get_estimates_and_a_progress_bar(work, capsys, tmp_path, monkeypatch):
    ck = str(work / "model.pth.tar")
    src, out, png = str(work / "in.png"), str(tmp_path / "o.glic"), str(tmp_path / "o.png")
    assert _main(capsys, "compress", src, out, "-c", ck)[0] == 0
    plain = Path(out).read_bytes()
    from gnn_lic.codec import budget

    monkeypatch.setattr(budget, "ANNOUNCE_PIXELS", 1)  # every image is "large"
    monkeypatch.setattr(budget, "CALIBRATION_SIDE", 16)
    code, stdout, err = _main(capsys, "compress", src, out, "-c", ck, "-f")
    assert code == 0 and "bpp" in stdout and Path(out).read_bytes() == plain
    assert f"{W}x{H} image with" in err and "GB and" in err and "min (estimates" in err
    code, stdout, err = _main(capsys, "decompress", out, png, "-c", ck)
    assert code == 0 and "min (estimates" in err and Path(png).exists()


def test_progress_bar_over_the_estimated_time(capsys):
    import time

    from gnn_lic.codec.budget import _progress

    with _progress(2.0, "job"):
        time.sleep(0.7)
    err = capsys.readouterr().err
    assert "job:" in err and "of about 2 s" in err


def test_compress_scheme_w8_is_recorded_and_decodes(work, capsys, tmp_path):
    """``--scheme`` is recorded in the stream (default: the model's); decompress picks the scheme from the file."""
    import torch

    from gnn_lic.models import create_model

    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "gabic.pt", create_model("gabic", size="tiny"))
    stream, png = tmp_path / "w8.glic", tmp_path / "w8.png"
    assert _main(capsys, "compress", str(work / "in.png"), str(stream), "-c", str(ck), "--scheme", "w8")[0] == 0
    assert inspect_stream(stream.read_bytes())["arithmetic"] == "fixed8"
    assert _main(capsys, "decompress", str(stream), str(png), "-c", str(ck))[0] == 0
    net, _ = load_checkpoint(ck)
    assert np.array_equal(read_image(png), decode_image(net, stream.read_bytes()))
    # without --scheme, the model's default (GABIC: w8); --scheme fx16 overrides it
    assert _main(capsys, "compress", str(work / "in.png"), str(tmp_path / "d.glic"), "-c", str(ck))[0] == 0
    assert inspect_stream((tmp_path / "d.glic").read_bytes())["arithmetic"] == "fixed8"
    assert _main(capsys, "compress", str(work / "in.png"), str(tmp_path / "f.glic"), "-c", str(ck),
                 "--scheme", "fx16")[0] == 0
    assert inspect_stream((tmp_path / "f.glic").read_bytes())["arithmetic"] == "fixed"
    assert _main(capsys, "decompress", str(tmp_path / "f.glic"), str(tmp_path / "f.png"), "-c", str(ck))[0] == 0
    code, _, err = _main(capsys, "compress", str(work / "in.png"), str(tmp_path / "x.glic"), "-c", str(ck),
                         "--scheme", "w9")
    assert code == 2 and not (tmp_path / "x.glic").exists()
