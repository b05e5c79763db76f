"""``python -m gnn_lic.bench codec`` plumbing: our models and an authors'-code stand-in."""

import numpy as np

from gnn_lic.bench.codec import _codec_authors, _codec_one, _train_authors, _train_one
from gnn_lic.codec import write_image

KEYS = {"forward_s", "encode_s", "decode_s", "peak_gb", "bpp", "params_M"}
TRAIN_KEYS = {"train_step_s", "train_peak_gb", "train_warmup_steps"}


def test_codec_rows_for_ours_and_an_authors_checkout(tmp_path):
    image = tmp_path / "img.png"
    write_image(image, (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8))
    ours = _codec_one("glic", "tiny", str(image), 1)
    assert KEYS <= ours.keys() and ours["image"] == "96x64" and 0 <= ours["graph_share"] < 1
    assert TRAIN_KEYS <= _train_one("glic", "tiny", 1, 1, 64).keys()
    # a stand-in checkout: the authors' package name, exposing the same model interface
    pkg = tmp_path / "checkout" / "glic_model"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from gnn_lic.models import create_model\n\ndef GLICModel():\n    return create_model('glic', size='tiny')\n")
    theirs = _codec_authors("glic", str(tmp_path / "checkout"), str(image), 1)
    assert KEYS <= theirs.keys() and theirs["size"] == "authors"
    assert TRAIN_KEYS <= _train_authors("glic", str(tmp_path / "checkout"), 1, 1, 64).keys()
    assert theirs["bpp"] > 0 and theirs["params_M"] == ours["params_M"]


def test_image_sizes_and_slopes(capsys):
    import math

    import pytest

    from gnn_lic.bench import codec
    from gnn_lic.bench.__main__ import main

    assert codec.parse_image_size("96X64") == (96, 64)
    for bad in ("96", "x64", "0x5", "axb"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            codec.parse_image_size(bad)
    assert math.isclose(codec.loglog_slope([1, 2, 4], [3, 6, 12]), 1.0)
    assert math.isclose(codec.loglog_slope([1, 4], [1, 8]), 1.5)
    # two image sizes of the tiny model in fresh processes: rows per size, then the slopes
    rows = codec.bench_codec(["glic"], ["tiny"], None, 1, {"tiny": 1}, {"tiny": 64}, False, image_sizes=["64x64", "128x64"])
    assert [r["image"] for r in rows] == ["64x64", "128x64"]
    out = capsys.readouterr().out
    assert "log-log slope against pixels (2 sizes): forward_s" in out
    assert main(["codec", "--sizes", "tiny,64y64"]) == 2
    assert "unknown size '64y64'" in capsys.readouterr().err


def test_training_steps_are_timed_once_memory_is_reused(monkeypatch):
    """Warm-up ends at the first step (from the fewest on) that faults in almost no fresh page, and at the most
    allowed; the timed steps come after it."""
    import torch

    from gnn_lic.bench import codec
    from gnn_lic.models import create_model

    net = create_model("glic", size="tiny")

    real_step = torch.optim.Adam.step

    def run(faults_per_step):
        counter = {"faults": 0, "steps": 0}

        def counted(self, *a, **k):  # every training step ends with one optimiser step
            counter["steps"] += 1
            n = counter["steps"]
            counter["faults"] += faults_per_step[n - 1] if n <= len(faults_per_step) else 0
            return real_step(self, *a, **k)

        monkeypatch.setattr(codec, "_minor_faults", lambda: counter["faults"])
        monkeypatch.setattr(torch.optim.Adam, "step", counted)
        r = codec._time_train(net, 2, 1, 32)
        return r, counter["steps"]

    lo, hi = codec.TRAIN_WARMUP
    many = 10 * codec.STEADY_FAULTS
    r, steps = run([many] * 3 + [0] * 20)  # fresh memory in the first three steps
    assert r["train_warmup_steps"] == max(lo, 4) and steps == r["train_warmup_steps"] + 2 and r["train_faults"] == 0
    r, steps = run([0] * 20)  # steady from the start: the fewest warm-up steps
    assert r["train_warmup_steps"] == lo and steps == lo + 2
    r, steps = run([many] * 20)  # never steady: the most, and the timed steps say so
    assert r["train_warmup_steps"] == hi and steps == hi + 2 and r["train_faults"] == many
