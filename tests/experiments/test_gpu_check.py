"""experiments/gpu_check.py on the CPU with --quick (the GPU run is the same code with paper sizes)."""

import json

import pytest
import torch

from gnn_lic.models.zoo import shipped_weights


def test_quick_cpu_run_passes_and_reports(gpu_check, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "device: cpu" in text and "all checks passed" in text
    report = json.loads(out.read_text())
    checks = [r["check"] for r in report["rows"]]
    for name in ("glic", "gabic"):
        assert sum(c.startswith(f"{name}-tiny ") for c in checks) == 3  # forward+backward, round trip, training
    assert sum(c.startswith("graph ") for c in checks) == 15  # 5 candidate rules x 3 selectors
    for name in ("glic", "gabic"):
        if shipped_weights(name, "small"):
            assert f"{name}-small strings cpu<->cpu 128x128" in checks
    assert all(r["ok"] for r in report["rows"]) and report["ok"]
    for r in report["rows"]:
        assert r["check"] in text
        if "images_per_s" in r:
            assert r["images_per_s"] > 0 and r["images_per_s"] == pytest.approx(2 / r["step_s"])
        if "max_abs_diff" in r:
            assert r["max_abs_diff"] <= gpu_check.ROUNDTRIP_ATOL and r["bytes"] > 0
            assert r["forward_mean_diff"] <= gpu_check.FORWARD_MEAN_ATOL
        if r["check"].startswith("graph "):
            assert r["edges"] > 0


def test_a_failed_check_fails_the_run(gpu_check, monkeypatch, capsys):
    row = gpu_check.check_roundtrip("gabic", "tiny", (64, 64), torch.device("cpu"))
    assert row["ok"]
    monkeypatch.setattr(gpu_check, "ROUNDTRIP_ATOL", -1.0)  # nothing can pass
    bad = gpu_check.check_roundtrip("gabic", "tiny", (64, 64), torch.device("cpu"))
    assert not bad["ok"] and "allowed" in bad["detail"]
    report = {"device": "cpu", "device_name": "cpu", "torch": torch.__version__, "cuda": None, "quick": True,
              "rows": [row, bad], "ok": False}
    monkeypatch.setattr(gpu_check, "run_checks", lambda device, quick, models: report)
    assert gpu_check.main(["--device", "cpu", "--quick"]) == 1
    assert "FAIL" in capsys.readouterr().out
    # an exception inside a check is a failed row, not a crash
    rows = gpu_check._guard(lambda: 1 / 0, "broken")
    assert rows == [{"check": "broken", "ok": False, "detail": "ZeroDivisionError: division by zero"}]


def test_bad_arguments_exit_2(gpu_check, capsys):
    assert gpu_check.main(["--device", "cpu", "--models", "no-such-model"]) == 2
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_the_cross_device_check_fails_when_a_decoder_misses_the_latents(gpu_check, monkeypatch):
    import gnn_lic.models as models

    if not shipped_weights("gabic", "small"):
        pytest.skip("no shipped gabic-small weights")
    create = models.create_model

    def off_by_one(*args, **kwargs):  # a decoder whose latents are one step off
        net = create(*args, **kwargs)
        dec = net.latent_codec.decompress
        net.latent_codec.decompress = lambda *a, **k: {**dec(*a, **k), "y_hat": dec(*a, **k)["y_hat"] + 1}
        return net

    good = gpu_check.check_cross_device("gabic", (64, 64), torch.device("cpu"))
    assert good["ok"] and good["bytes"] > 0 and good["detail"] == "both encoders wrote the same bytes"
    monkeypatch.setattr(models, "create_model", off_by_one)
    bad = gpu_check.check_cross_device("gabic", (64, 64), torch.device("cpu"))
    assert not bad["ok"] and bad["detail"] == "latents differ: cpu->cpu"
