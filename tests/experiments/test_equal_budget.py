"""experiments/equal_budget.py: steps sized from measured CPU time, resumable, one table per study."""

import argparse
import json
import sys

import pytest


@pytest.fixture
def equal_budget(experiment_script):
    return experiment_script("equal_budget")


def test_cpu_per_step_leaves_out_the_first_steps(equal_budget):
    rows = [{"step": 1, "cpu_time": 9.0}, {"step": 2, "cpu_time": 10.0}, {"step": 3, "cpu_time": 10.5},
            {"step": 4, "cpu_time": 11.0}, {"step": 5, "cpu_time": 11.5}]
    assert equal_budget.cpu_per_step(rows) == pytest.approx(0.5)
    assert equal_budget.cpu_per_step(rows, skip=0) == pytest.approx(11.5 / 5)
    with pytest.raises(ValueError, match="more than 2"):
        equal_budget.cpu_per_step(rows[:2])


def test_two_tiny_models_at_equal_cpu_time(equal_budget, data_dirs, tmp_path, capsys):
    train, test = data_dirs
    out, res = tmp_path / "out", tmp_path / "results"
    argv = ["--models", "glic", "cnn", "--size", "tiny", "--cpu-hours", "0.0005", "--lambdas", "0.005", "0.02",
            "--data-train", str(train), "--data-test", str(test), "--probe-steps", "4", "--parallel", "2",
            "--out", str(out), "--results", str(res), "--", "--batch-size", "2", "--patch-size", "64",
            "--entropy-estimation"]
    assert equal_budget.main(argv) == 0
    plan = json.loads((out / "plan.json").read_text())
    for model in ("glic", "cnn"):  # steps = budget / measured CPU seconds per step
        item = plan["models"][model]
        assert item["steps"] == max(1, int(0.0005 * 3600 / item["cpu_s_per_step"]))
    doc = json.loads((res / "equal_budget.json").read_text())
    assert set(doc["curves"]) == {"glic-tiny", "cnn-tiny"} and doc["anchor"] == "cnn-tiny"
    assert all(len(c["results"]["bpp"]) == 2 for c in doc["curves"].values())  # one variable-rate model, 2 points
    for row in doc["table"].values():  # a BD-rate, or why there is none (a few tiny steps may give no curve)
        assert (row["bd_rate"] is None) == bool(row["bd_error"])
    assert doc["table"]["glic-tiny"]["steps"] == plan["models"]["glic"]["steps"]
    table = (res / "table.md").read_text()
    assert "| glic-tiny |" in table and "| cnn-tiny |" in table and "equal_budget.py --models glic cnn" in table
    assert (res / "rd_psnr.png").stat().st_size > 0
    self_bd = doc["pairwise_bd_rate"]["cnn-tiny"]["cnn-tiny"]  # 0, or None where the tiny curve is not usable
    assert self_bd == doc["table"]["cnn-tiny"]["bd_rate"] and self_bd in (0.0, None)
    assert "BD-rate of each row against each column" in table
    probes = list((out / "calibration").glob("*/*/variable-rate"))
    assert len(probes) == 2  # the probes stop early: no evaluation, no results
    assert all(len((p / "eval.csv").read_text().splitlines()) <= 1 and not any((p / "results").iterdir())
               for p in probes)
    jobs = sorted(p.name for p in (out / "jobs").glob("*/*"))
    capsys.readouterr()
    assert equal_budget.main(argv) == 0  # finished: nothing is trained again
    assert sorted(p.name for p in (out / "jobs").glob("*/*")) == jobs
    assert "$ " not in capsys.readouterr().err
    bad = argv[:argv.index("--cpu-hours") + 1] + ["1"] + argv[argv.index("--cpu-hours") + 2:]
    assert equal_budget.main(bad) == 2 and "other models, variants or hours" in capsys.readouterr().err


def test_parse_variants(equal_budget):
    assert equal_budget.parse_variants(["base=", "lr=--lr 5e-4 --warmup 10"]) == {
        "base": [], "lr": ["--lr", "5e-4", "--warmup", "10"]}
    for bad in (["no-flags"], ["a b=--lr 1"], ["x=", "x=--lr 1"], ["q=--lr '1"]):
        with pytest.raises(equal_budget.UsageError):
            equal_budget.parse_variants(bad)


def test_recipe_variants_at_equal_cpu_time(equal_budget, data_dirs, tmp_path, capsys):
    train, test = data_dirs
    out, res = tmp_path / "out", tmp_path / "results"
    argv = ["--models", "glic", "--size", "tiny", "--cpu-hours", "0.0004", "--lambdas", "0.005", "0.02",
            "--data-train", str(train), "--data-test", str(test), "--probe-steps", "4", "--parallel", "2",
            "--variant", "base=", "--variant", "lean=--no-wavelet --rate-sampling rising --lr 5e-4",
            "--out", str(out), "--results", str(res), "--", "--batch-size", "2", "--patch-size", "64",
            "--entropy-estimation"]
    assert equal_budget.main(argv) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["models"]["glic@lean"]["flags"] == ["--no-wavelet", "--rate-sampling", "rising", "--lr", "5e-4"]
    assert plan["models"]["glic@lean"]["calibration"] == "glic@lean"  # no wavelet branch: other work per step
    assert plan["models"]["glic@base"] == {**plan["models"]["glic@base"], "model": "glic", "flags": []}
    job = next((out / "jobs" / "glic@lean").glob("*/config.yaml")).read_text()
    assert "wavelet: false" in job and "rate_sampling: rising" in job and "lr: 0.0005" in job
    doc = json.loads((res / "equal_budget.json").read_text())
    assert doc["anchor"] == "glic-tiny@base" and set(doc["curves"]) == {"glic-tiny@base", "glic-tiny@lean"}
    table = doc["table"]
    assert table["glic-tiny@lean"]["parameters"] < table["glic-tiny@base"]["parameters"]  # no wavelet branch
    assert table["glic-tiny@base"]["bd_rate"] in (0.0, None)  # None where a few tiny steps give no usable curve
    assert table["glic-tiny@base"]["bd_rate"] == doc["pairwise_bd_rate"]["glic-tiny@base"]["glic-tiny@base"]
    text = (res / "table.md").read_text()
    assert "| glic-tiny@lean |" in text and "`--no-wavelet --rate-sampling rising --lr 5e-4`" in text
    capsys.readouterr()
    changed = [a if a != "lean=--no-wavelet --rate-sampling rising --lr 5e-4" else "lean=--lr 5e-4" for a in argv]
    assert equal_budget.main(changed) == 2 and "other models, variants or hours" in capsys.readouterr().err


def test_pairwise_bd_rates_match_bd_table_and_mark_disjoint_curves(equal_budget):
    from gnn_lic.evaluation.bd import bd_table

    def curve(bpp, psnr):
        return {"results": {"bpp": bpp, "psnr-rgb": psnr}}

    curves = {"a": curve([0.1, 0.2, 0.4, 0.8], [24.0, 26.0, 28.0, 30.0]),
              "b": curve([0.12, 0.22, 0.45, 0.9], [24.5, 26.4, 28.3, 30.1]),
              "far": curve([0.1, 0.2, 0.4, 0.8], [35.0, 36.0, 37.0, 38.0])}
    pairs = equal_budget.pairwise_bd_rates(curves)
    assert pairs["b"]["a"] == pytest.approx(bd_table(curves, "a")["b"]["bd_rate"])
    assert pairs["a"]["b"] == pytest.approx(bd_table(curves, "b")["a"]["bd_rate"])
    assert pairs["a"]["a"] == 0.0 and pairs["far"]["a"] is None and pairs["a"]["far"] is None


def test_equal_work_recipes_share_one_calibration(equal_budget):
    specs = {"glic@base": {"model": "glic", "flags": []},
             "glic@lr": {"model": "glic", "flags": ["--lr", "5e-4", "--lr-schedule", "cosine"]},
             "glic@batch4": {"model": "glic", "flags": ["--batch-size", "4"]},
             "glic@batch04": {"model": "glic", "flags": ["--batch-size", "04", "--warmup", "9"]},
             "glic@wavelet": {"model": "glic", "flags": ["--wavelet"]},
             "cnn@base": {"model": "cnn", "flags": []}}
    assert equal_budget.calibration_groups(specs) == {
        "glic@base": ["glic@base", "glic@lr"], "glic@batch4": ["glic@batch4", "glic@batch04"],
        "glic@wavelet": ["glic@wavelet"], "cnn@base": ["cnn@base"]}


def test_each_job_is_decided_when_its_turn_comes(equal_budget, tmp_path):
    args = argparse.Namespace(size="tiny", lambdas=["mse"], seed=0, data_train=None, data_test=None, recipe=[])
    item = {"steps": 5}
    folder = tmp_path / "jobs" / "glic"
    start = equal_budget.job_command(args, tmp_path, "glic", item)
    assert start[start.index("--steps") + 1] == "5" and start[start.index("--out") + 1] == str(folder)
    (folder / "job-1").mkdir(parents=True)
    (folder / "job-1" / "config.yaml").write_text("model: glic\n")  # started (e.g. by hand) meanwhile
    assert equal_budget.job_command(args, tmp_path, "glic", item)[-2:] == ["--resume", str(folder / "job-1")]
    (folder / "job-1" / "results").mkdir()
    assert equal_budget.job_command(args, tmp_path, "glic", item) is None
    # the second command is decided after the first has run: it sees the first one's work and does nothing
    marker = tmp_path / "done"
    first = lambda: [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]  # noqa: E731
    second = lambda: None if marker.exists() else [sys.executable, "-c", "raise SystemExit(3)"]  # noqa: E731
    equal_budget._run_jobs([first, second], parallel=1)
    assert marker.exists()
