"""python -m gnn_lic compress / decompress with several files: one process, each model built once,
a failing file reported on its own line while the others go on."""

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
import gnn_lic.codec.shipped as shipped  # noqa: E402
from gnn_lic.cli import UsageError, each_file, expand_inputs, file_pairs, output_paths  # noqa: E402
from gnn_lic.codec import decode_image, encode_image  # noqa: E402
from gnn_lic.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from gnn_lic.models.zoo import WEIGHTS_DIR_ENV  # noqa: E402


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    net = cm.reseeded(3)
    save_checkpoint(d / "model.pth.tar", net)
    for i, (h, w) in enumerate(((32, 48), (24, 40), (40, 24))):
        img = np.random.RandomState(i).randint(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"im{i}.png")
    (d / "notes.txt").write_text("this is not an image\n")
    return d


def _main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_output_paths_pair_each_input_with_its_own_file(tmp_path):
    assert output_paths(["a/x.png"], "y.glic", ".glic") == ["y.glic"]
    assert output_paths(["a/x.png", "b/z.jpeg"], str(tmp_path), ".glic") == [str(tmp_path / "x.glic"),
                                                                          str(tmp_path / "z.glic")]
    assert output_paths(["a/x.png"], str(tmp_path), ".glic") == [str(tmp_path / "x.glic")]  # into a folder
    with pytest.raises(UsageError, match="need an existing output folder"):
        output_paths(["x.png", "z.png"], str(tmp_path / "nowhere"), ".glic")
    with pytest.raises(UsageError, match="would both be written to"):
        output_paths(["a/x.png", "b/x.jpg"], str(tmp_path), ".glic")


def test_each_file_goes_on_after_an_expected_error_and_stops_on_any_other(capsys, tmp_path):
    done = []

    def work(source, target):
        if source == "bad":
            raise ValueError(f"cannot use {source}")
        if source == "bug":
            raise KeyError(source)
        done.append((source, target))

    assert each_file(file_pairs(["a", "bad", "b"], str(tmp_path), ".x"), work, (ValueError,), "p") == 2
    assert done == [("a", str(tmp_path / "a.x")), ("b", str(tmp_path / "b.x"))]
    assert capsys.readouterr().err.splitlines() == ["p: error: bad: cannot use bad", "p: error: 1 of 3 files failed"]
    with pytest.raises(ValueError):  # one input: its error is the job's
        each_file([("bad", "out.x")], work, (ValueError,))
    done.clear()
    with pytest.raises(KeyError):
        each_file(file_pairs(["a", "bug", "b"], str(tmp_path), ".x"), work, (ValueError,))
    assert done == [("a", str(tmp_path / "a.x"))]


def test_batch_round_trip_is_the_single_file_round_trip(work, capsys, tmp_path):
    ck = work / "model.pth.tar"
    images = [work / f"im{i}.png" for i in range(3)]
    glic, png = tmp_path / "glic", tmp_path / "png"
    glic.mkdir()
    png.mkdir()
    code, out, err = _main(capsys, "compress", *images, glic, "-c", ck)
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == [str(glic / f"im{i}.glic") for i in range(3)]
    net, _ = load_checkpoint(ck)
    from gnn_lic.codec import read_image

    for i, path in enumerate(images):
        assert (glic / f"im{i}.glic").read_bytes() == encode_image(net, read_image(path))
    code, out, err = _main(capsys, "decompress", *sorted(glic.iterdir()), png, "-c", ck)
    assert code == 0, err
    for i in range(3):
        expected = decode_image(net, (glic / f"im{i}.glic").read_bytes())
        assert np.array_equal(np.asarray(Image.open(png / f"im{i}.png")), expected)
    code, _, err = _main(capsys, "compress", *images, glic, "-c", ck)  # outputs exist: every file refused
    assert code == 2 and err.count("already exists") == 3 and err.endswith("3 of 3 files failed\n")
    assert _main(capsys, "compress", *images, glic, "-c", ck, "--force")[0] == 0


def test_a_bad_file_is_reported_and_the_others_are_written(work, capsys, tmp_path):
    ck = work / "model.pth.tar"
    (tmp_path / "out").mkdir()
    args = [work / "im0.png", work / "missing.png", work / "notes.txt", work / "im2.png", tmp_path / "out", "-c", ck]
    code, out, err = _main(capsys, "compress", *args)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 3 and "Traceback" not in err
    assert "missing.png" in lines[0] and "does not exist" in lines[0]
    assert "notes.txt" in lines[1] and lines[2] == "gnn_lic: error: 2 of 4 files failed"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.glic", "im2.glic"]
    (tmp_path / "out" / "broken.glic").write_bytes((tmp_path / "out" / "im0.glic").read_bytes()[:-5])
    (tmp_path / "png").mkdir()
    code, _, err = _main(capsys, "decompress", *sorted((tmp_path / "out").iterdir()), tmp_path / "png", "-c", ck)
    assert code == 2 and "broken.glic" in err and err.endswith("1 of 3 files failed\n")
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["im0.png", "im2.png"]


def test_errors_of_the_whole_job_stop_it_before_anything_is_written(work, capsys, tmp_path):
    images = [work / "im0.png", work / "im1.png"]
    for args, words in (((*images, tmp_path / "o.glic", "-c", work / "model.pth.tar"), "existing output folder"),
                        ((work / "im0.png", work / "im0.png", tmp_path, "-c", work / "model.pth.tar"), "both"),
                        ((*images, tmp_path, "-c", work / "missing.pt"), "does not exist")):
        code, out, err = _main(capsys, "compress", *args)
        assert code == 2 and err.count("\n") == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


def test_decompress_builds_each_shipped_model_once(work, capsys, tmp_path, monkeypatch, ship):
    weights = tmp_path / "weights"
    net, _ = load_checkpoint(work / "model.pth.tar")
    ship(save_checkpoint(weights / "h.pt", net), cm.HYPER, "tiny")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(weights))
    built = []
    real = shipped.create_model
    monkeypatch.setattr(shipped, "create_model", lambda *a, **k: built.append(a) or real(*a, **k))
    (tmp_path / "glic").mkdir()
    (tmp_path / "png").mkdir()
    images = [work / f"im{i}.png" for i in range(3)]
    assert _main(capsys, "compress", *images, tmp_path / "glic", "-m", cm.HYPER, "-s", "tiny")[0] == 0
    assert len(built) == 1
    assert _main(capsys, "decompress", *sorted((tmp_path / "glic").iterdir()), tmp_path / "png")[0] == 0
    assert len(built) == 2 and len(list((tmp_path / "png").iterdir())) == 3


def test_info_reads_several_files(work, capsys, tmp_path):
    ck = work / "model.pth.tar"
    assert _main(capsys, "compress", work / "im0.png", work / "im1.png", tmp_path, "-c", ck)[0] == 0
    files = [tmp_path / "im0.glic", tmp_path / "im1.glic"]
    code, out, err = _main(capsys, "info", files[0])
    assert code == 0 and out.startswith("format: GLIC") and "==>" not in out
    code, out, err = _main(capsys, "info", *files, work / "im0.png")  # an image is no stream: one line, the others
    blocks = out.split("\n\n")
    assert code == 2 and len(blocks) == 2 and "bad magic" in err and err.endswith("1 of 3 files failed\n")
    for block, path in zip(blocks, files):
        assert block.startswith(f"==> {path} <==\nformat: GLIC") and f"total_bytes: {path.stat().st_size}" in block
    code, out, _ = _main(capsys, "info", *files, "--json")
    listed = json.loads(out)
    assert code == 0 and [e["file"] for e in listed] == [str(f) for f in files]
    assert [e["height"] for e in listed] == [32, 24]
    alone = json.loads(_main(capsys, "info", files[1], "--json")[1])
    assert alone == {k: v for k, v in listed[1].items() if k != "file"}


def test_a_reader_that_goes_away_ends_the_output_quietly(work, capsys, tmp_path):
    assert _main(capsys, "compress", work / "im0.png", tmp_path / "a.glic", "-c", work / "model.pth.tar")[0] == 0
    env = {k: v for k, v in os.environ.items() if k != "GNN_LIC_PLUGINS"}
    # some 200 kB of headers: more than a pipe holds, so the writes after the reader has gone fail
    proc = subprocess.Popen([sys.executable, "-m", "gnn_lic", "info", *[str(tmp_path / "a.glic")] * 400],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline().startswith(b"==> ")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b"", err


def test_patterns_the_shell_left_are_expanded(work, capsys, tmp_path):
    """A pattern that names no file is matched as a POSIX shell would (Windows' shell passes it on as is)."""
    pattern = str(work / "im*.png")
    assert expand_inputs([pattern]) == [str(work / f"im{i}.png") for i in range(3)]
    assert expand_inputs([str(work / "nothing*.png"), "plain.png"]) == [str(work / "nothing*.png"), "plain.png"]
    odd = tmp_path / "odd[1].png"  # a file whose name looks like a pattern is taken as it is
    odd.write_bytes(b"x")
    assert expand_inputs([str(odd)]) == [str(odd)]
    (tmp_path / "out").mkdir()
    code, out, err = _main(capsys, "compress", pattern, tmp_path / "out", "-c", work / "model.pth.tar")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.glic", "im1.glic", "im2.glic"]
    code, out, _ = _main(capsys, "info", str(tmp_path / "out" / "*.glic"), "--json")
    assert code == 0 and len(json.loads(out)) == 3
    code, _, err = _main(capsys, "decompress", str(tmp_path / "none*.glic"), tmp_path / "x.png")
    assert code == 2 and "none*.glic' does not exist" in err
