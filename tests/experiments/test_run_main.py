"""experiments/run.py: end to end on a tiny model, YAML overlay, resume, evaluation only, errors."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from gnn_lic.training import LAMBDA_PRESETS, parse_lambdas
from gnn_lic.training.options import resolve_options, train_config, validate_options


def _job_dir(out: str) -> Path:
    m = re.search(r"run folder: (.+)$", out, re.M)
    assert m, out
    return Path(m.group(1).strip())


def test_end_to_end_writes_the_run_folder(run_script, tiny_args, capsys):
    assert run_script.main(tiny_args) == 0
    out = capsys.readouterr().out
    job = _job_dir(out)
    assert re.search(r"^\s+0\.01\s+\d+\.\d+\s+\d+\.\d+\s+\d\.\d+", out, re.M)  # lambda, bpp, PSNR, MS-SSIM
    for name in ("config.yaml", "env.json", "results/glic-tiny.json", "results/rd_psnr.png",
                 "results/rd_ms-ssim-db.png"):
        assert (job / name).is_file(), name
    run = job / "lambda-0.01"
    for name in ("config.yaml", "env.json", "log.csv", "eval.csv", "checkpoints/latest.pt", "checkpoints/best.pt",
                 "results/eval.json"):
        assert (run / name).is_file(), name
    with open(run / "log.csv") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2"]
    doc = json.loads((job / "results/glic-tiny.json").read_text())
    assert doc["name"] == "glic-tiny" and len(doc["results"]["bpp"]) == 1
    assert {"bpp", "psnr-rgb", "ms-ssim-rgb", "lambda"} <= set(doc["results"])
    assert doc["results"]["lambda"] == [0.01]
    ev = json.loads((run / "results/eval.json").read_text())
    assert ev["mode"] == "bitstream" and ev["bpp"] == pytest.approx(doc["results"]["bpp"][0])
    cfg = yaml.safe_load((job / "config.yaml").read_text())
    assert cfg["lambdas"] == [0.01] and cfg["steps"] == 2 and cfg["model"] == "glic"
    assert torch.load(run / "checkpoints/latest.pt", weights_only=True)["config"]["lmbda"] == 0.01


def test_yaml_overlay_and_precedence(run_script, tmp_path, data_dirs):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("model: glic\nsize: tiny\nbatch-size: 3\nsteps: 7\nlambdas: [mse]\nmetric: mse\nanchors: true\n")
    opts = resolve_options(["--config", str(cfg), "--steps", "2"])
    assert opts["steps"] == 2  # the flag wins over the file
    assert opts["batch_size"] == 3 and opts["size"] == "tiny" and opts["anchors"] is True
    assert parse_lambdas(opts["lambdas"], opts["metric"]) == LAMBDA_PRESETS["mse"]
    assert resolve_options(["--model", "glic"])["patch_size"] == 128  # built-in default
    assert parse_lambdas(None, "ms-ssim") == [8.0, 36.0]
    assert parse_lambdas(["0.01", "ms-ssim", "0.01"], "mse") == [0.01, 3.0, 5.0, 8.0, 16.0, 36.0, 64.0]


def test_yaml_job_runs(run_script, tiny_args, tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("steps: 5\nlambdas: 0.02\nsave_every: 1\n")
    args = tiny_args[:]
    i = args.index("--lambdas")
    del args[i:i + 2]
    assert run_script.main(args + ["--config", str(cfg), "--steps", "1"]) == 0
    job = _job_dir(capsys.readouterr().out)
    saved = yaml.safe_load((job / "config.yaml").read_text())
    assert saved["steps"] == 1 and saved["lambdas"] == [0.02] and saved["save_every"] == 1
    assert (job / "lambda-0.02" / "checkpoints" / "latest.pt").is_file()


def test_stop_and_resume(run_script, tiny_args, capsys):
    args = [a if a != "2" else "3" for a in tiny_args]  # 3 steps
    assert run_script.main(args + ["--stop-after", "1"]) == 0
    out = capsys.readouterr().out
    assert "--resume" in out
    job = _job_dir(out)
    assert not (job / "results" / "glic-tiny.json").exists()
    assert run_script.main(["--resume", str(job), "--no-progress"]) == 0
    assert _job_dir(capsys.readouterr().out) == job
    with open(job / "lambda-0.01" / "log.csv") as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2", "3"]
    assert (job / "results" / "glic-tiny.json").is_file()


def test_evaluate_only_with_anchors(run_script, tiny_args, data_dirs, tmp_path, capsys):
    assert run_script.main(tiny_args) == 0
    job = _job_dir(capsys.readouterr().out)
    ckpt = job / "lambda-0.01" / "checkpoints" / "latest.pt"
    argv = ["--checkpoint", str(ckpt), "--data-test", str(data_dirs[1]), "--out", str(tmp_path / "ev"), "--anchors",
            "--entropy-estimation"]
    assert run_script.main(argv) == 0
    out = capsys.readouterr().out
    ev = _job_dir(out)
    assert "BD-rate of glic-tiny vs the other curves" in out and "vs jpeg" in out
    assert (ev / "results" / "glic-tiny.json").is_file() and (ev / "results" / "anchors" / "jpeg.json").is_file()
    doc = json.loads((ev / "results" / "glic-tiny.json").read_text())
    assert doc["results"]["lambda"] == [0.01] and doc["results"]["step"] == [2]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
        ([], "--model is required"),
        (["--model", "glic", "--lambdas", "abc"], "bad lambda"),
        (["--model", "glic", "--steps", "0"], "bad value"),
        (["--model", "glic", "--metric", "psnr"], "unknown metric"),
        (["--model", "glic", "--bogus"], "unrecognized arguments"),
        (["--model", "glic", "--device", "tpu"], "unknown device"),
        (["--config", "/no/such.yaml"], "does not exist"),
        (["--resume", "/no/such/job"], "not a job folder"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(run_script, argv, message, capsys):
    assert run_script.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run.py: error:") and message in err[0], err


def test_bad_data_and_checkpoint_exit_2(run_script, tiny_args, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = tiny_args[:]
    args[args.index("--data-test") + 1] = str(empty)
    assert run_script.main(args) == 2
    err = capsys.readouterr().err
    assert "holds no images" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert run_script.main(["--checkpoint", str(bad)]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: glic\nlearning_rate: 3\n")
    assert run_script.main(["--config", str(cfg)]) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err


def test_help(run_script, capsys):
    assert run_script.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--size", "--lambdas", "--metric", "--steps", "--batch-size", "--patch-size", "--lr",
                 "--data-train", "--data-test", "--out", "--resume", "--checkpoint", "--device", "--seed",
                 "--threads", "--config", "--entropy-estimation", "--anchors"):
        assert flag in text, flag


def test_gabic_recipe_config(run_script):
    """experiments/configs/gabic.yaml is GABIC's recipe (GABIC Sec. 4) and builds valid TrainConfigs."""
    path = Path(run_script.__file__).parent / "configs" / "gabic.yaml"
    opts = resolve_options(["--config", str(path), "--steps", "3"])
    validate_options(opts)
    assert opts["model"] == "gabic" and opts["metric"] == "mse" and opts["steps"] == 3
    assert parse_lambdas(opts["lambdas"], opts["metric"]) == [0.0067, 0.0130, 0.025, 0.0483]
    assert (opts["lr_schedule"], opts["plateau_factor"], opts["plateau_patience"]) == ("plateau", 0.3, 10)
    assert (opts["lr"], opts["batch_size"], opts["patch_size"]) == (1e-4, 16, 256)
    cfg = train_config(opts, lmbda=0.0067)
    assert cfg.lr_schedule == "plateau" and cfg.plateau_patience == 10
    flags = resolve_options(["--model", "gabic", "--lr-schedule", "plateau", "--plateau-patience", "3"])
    assert flags["plateau_patience"] == 3 and flags["plateau_factor"] == 0.3


def test_two_lambdas_train_one_variable_rate_model_unless_told_otherwise(run_script, tiny_args, capsys):
    """The default with two or more lambdas is one variable-rate model; --no-variable-rate: one per lambda."""
    args = [a for a in tiny_args if a != "0.01"] + ["--entropy-estimation", "--no-anchors", "--no-shipped"]
    args[args.index("--lambdas") + 1:args.index("--lambdas") + 1] = ["0.02", "0.005"]
    assert run_script.main(args) == 0
    job = _job_dir(capsys.readouterr().out)
    assert sorted(p.name for p in job.iterdir() if p.is_dir()) == ["results", "variable-rate"]
    assert yaml.safe_load((job / "config.yaml").read_text())["variable_rate"] is None
    assert run_script.main(args + ["--no-variable-rate"]) == 0
    job = _job_dir(capsys.readouterr().out)
    assert sorted(p.name for p in job.iterdir() if p.is_dir()) == ["lambda-0.005", "lambda-0.02", "results"]


def test_default_yaml_spells_out_the_defaults(run_script):
    """experiments/configs/default.yaml gives the main job exactly what its built-in defaults give."""
    path = Path(run_script.__file__).parent / "configs" / "default.yaml"
    spelled, built_in = resolve_options(["--config", str(path)]), resolve_options(["--model", "glic"])
    assert spelled["variable_rate"] is True and built_in["variable_rate"] is None  # on: two lambdas
    assert parse_lambdas(spelled["lambdas"]) == parse_lambdas(built_in["lambdas"])
    keys = set(yaml.safe_load(path.read_text())) - {"variable-rate", "lambdas"}
    assert {k: spelled[k.replace("-", "_")] for k in keys} == {k: built_in[k.replace("-", "_")] for k in keys}


def test_variable_rate_job_reports_one_point_per_quality(run_script, tiny_args, capsys):
    args = [a for a in tiny_args if a != "0.01"]
    args[args.index("--lambdas") + 1:args.index("--lambdas") + 1] = ["0.02", "0.005"]
    assert run_script.main(args + ["--variable-rate", "--entropy-estimation"]) == 0
    job = _job_dir(capsys.readouterr().out)
    doc = json.loads((job / "results/glic-tiny.json").read_text())
    assert sorted(doc["results"]["lambda"]) == [0.005, 0.02] and len(doc["results"]["bpp"]) == 2
    run = job / "variable-rate"
    for q in (1, 2):
        assert json.loads((run / f"results/eval-q{q}.json").read_text())["quality"] == q
    assert torch.load(run / "checkpoints/latest.pt", weights_only=True)["config"]["rate_lambdas"] == [0.005, 0.02]


def test_variable_rate_needs_two_lambdas(run_script, tiny_args, capsys):
    assert run_script.main(tiny_args + ["--variable-rate"]) == 2
    assert "two lambdas" in capsys.readouterr().err
