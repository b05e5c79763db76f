"""The training loop: run folder, non-finite steps, checkpoints and exact resume."""

import csv
import math

import pytest
import torch

from gnn_lic.models.checkpoint import load_checkpoint
from gnn_lic.training import BEST, LATEST, ConfigError, Trainer, TrainConfig, eval_loss, parse_lambdas, train


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_run_folder_and_checkpoints(tiny_config):
    run = train(tiny_config.replace(eval_every=2))
    for name in ("config.yaml", "env.json", "log.csv", "eval.csv", LATEST, BEST):
        assert (run / name).is_file(), name
    assert (run / "results").is_dir()
    log = _rows(run / "log.csv")
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    assert {"loss", "bpp_loss", "mse_loss", "ortho_loss", "aux_loss", "lr", "time", "skipped"} <= set(log[0])
    assert float(log[-1]["lr"]) == pytest.approx(0.1 * tiny_config.lr)  # x0.1 at 80 % of the steps
    assert [int(r["step"]) for r in _rows(run / "eval.csv")] == [2, 4]
    # everything saved loads without unpickling code
    ckpt = torch.load(run / LATEST, weights_only=True)
    assert ckpt["step"] == 4 and isinstance(ckpt["config"], dict) and ckpt["config"]["lmbda"] == 0.01
    assert isinstance(ckpt["rng_state"]["torch"], torch.Tensor)
    assert {"optimizer", "aux_optimizer", "scheduler", "aux_scheduler", "metrics", "skipped", "elapsed", "cpu_elapsed"} <= set(ckpt)
    assert 0 < ckpt["cpu_elapsed"] and "cpu_time" in log[0]
    assert ckpt["aux_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1 * tiny_config.aux_lr)  # both drop
    net, best = load_checkpoint(run / BEST)
    best_logged = min(float(r["eval_loss"]) for r in _rows(run / "eval.csv"))
    assert best["metrics"]["best_eval_loss"] == pytest.approx(best_logged, rel=1e-5)
    assert net.model_name == "glic" and net.model_size == "tiny"
    import json

    env = json.loads((run / "env.json").read_text())
    assert {"python", "torch", "compressai", "torch_geometric", "torch_threads", "device", "seed", "git"} <= set(env)


def test_non_finite_step_is_skipped(tiny_config):
    tr = Trainer(tiny_config)
    before = _state(tr.net)
    x = tr.crops.batch(0, 2)
    x[0, 0, 0, 0] = float("nan")
    r = tr.train_step(x)
    assert r["skipped"] and math.isnan(r["loss"]) and tr.skipped == 1
    after = tr.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update at all
    assert not tr.optimizer.state and not tr.aux_optimizer.state
    r = tr.train_step(tr.crops.batch(1, 2))
    assert not r["skipped"] and math.isfinite(r["loss"])
    assert any(not torch.equal(before[k], v) for k, v in tr.net.state_dict().items())


def test_skipped_steps_are_logged(tiny_config, monkeypatch):
    tr = Trainer(tiny_config.replace(steps=3))
    real = tr.crops.batch

    def poisoned(step, *args, **kwargs):
        x = real(step, *args, **kwargs)
        return x * float("nan") if step == 1 else x

    monkeypatch.setattr(tr.crops, "batch", poisoned)
    run = tr.fit()
    log = _rows(run / "log.csv")
    assert [r["nonfinite"] for r in log] == ["0", "1", "0"]
    assert [r["skipped"] for r in log] == ["0", "1", "1"]
    assert torch.load(run / LATEST, weights_only=True)["skipped"] == 1


def test_resume_is_exact(tiny_config, tmp_path):
    cfg = tiny_config.replace(steps=6, eval_every=2, save_every=100)
    straight = train(cfg.replace(run_dir=str(tmp_path / "straight")))
    cut = train(cfg.replace(run_dir=str(tmp_path / "cut"), stop_after=3))
    assert torch.load(cut / LATEST, weights_only=True)["step"] == 3
    resumed = train(cfg.replace(run_dir=str(tmp_path / "cut"), resume=True))
    a = torch.load(straight / LATEST, weights_only=True)
    b = torch.load(resumed / LATEST, weights_only=True)
    assert a["step"] == b["step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for opt in ("optimizer", "aux_optimizer"):
        for i, st in a[opt]["state"].items():
            for key, v in st.items():
                assert torch.equal(v, b[opt]["state"][i][key]), (opt, i, key)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    cols = ("step", "loss", "bpp_loss", "mse_loss", "aux_loss", "lr")
    rows_a = [[r[c] for c in cols] for r in _rows(straight / "log.csv")]
    rows_b = [[r[c] for c in cols] for r in _rows(resumed / "log.csv")]
    assert rows_a == rows_b and len(rows_a) == 6
    assert _rows(straight / "eval.csv") == _rows(resumed / "eval.csv")


def test_resume_rebuilds_the_saved_model_after_its_preset_changed(tiny_config, monkeypatch):
    import gnn_lic.models.checkpoint as checkpoint
    import gnn_lic.models.registry as registry
    from gnn_lic.models.glic import GLIC_PRESETS

    cfg = tiny_config.replace(steps=2, save_every=1)
    run = train(cfg.replace(stop_after=1))
    # a later gnn_lic: the tiny preset lost the branch, and says so for checkpoints up to today's version
    now = checkpoint.CHECKPOINT_VERSION
    monkeypatch.setitem(GLIC_PRESETS, "tiny", {**GLIC_PRESETS["tiny"], "wavelet": False})
    monkeypatch.setitem(registry._EARLIER_PRESETS, "glic", {now: {"tiny": {"wavelet": True}}})
    monkeypatch.setattr(checkpoint, "CHECKPOINT_VERSION", now + 1)
    monkeypatch.setattr(checkpoint, "READABLE_VERSIONS", (*checkpoint.READABLE_VERSIONS, now + 1))
    trainer = Trainer(cfg.replace(resume=True))
    assert trainer.step == 1 and trainer.net.wavelet  # the run's model, not today's preset
    train(cfg.replace(resume=True))
    assert torch.load(run / LATEST, weights_only=True)["step"] == 2


def test_two_processes_never_train_in_one_run_folder(tiny_config):
    from gnn_lic.training.runinfo import lock_run_dir

    run = train(tiny_config.replace(steps=2, stop_after=1))
    held = lock_run_dir(run)  # as another process resuming the job would
    try:
        with pytest.raises(ConfigError, match="in use by another training process"):
            train(tiny_config.replace(steps=2, resume=True))
    finally:
        held.close()
    assert torch.load(run / LATEST, weights_only=True)["step"] == 1
    train(tiny_config.replace(steps=2, resume=True))  # released: it continues
    assert torch.load(run / LATEST, weights_only=True)["step"] == 2


def test_resume_refusals(tiny_config):
    run = train(tiny_config.replace(steps=1))
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        Trainer(tiny_config.replace(steps=1))
    with pytest.raises(ConfigError, match="lmbda"):
        Trainer(tiny_config.replace(steps=1, lmbda=0.5, resume=True))
    with pytest.raises(ConfigError, match="unknown model"):
        Trainer(tiny_config.replace(model="no-such-model"))
    with pytest.raises(ConfigError, match="run folder"):
        Trainer(tiny_config.replace(run_dir=None, resume=True))
    assert run.is_dir()


def test_config_validation_and_dict_round_trip():
    cfg = TrainConfig(model="glic", steps=10)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_dict({"batch-size": 3}).batch_size == 3
    for bad in ({"steps": 0}, {"metric": "psnr"}, {"lr_schedule": "linear"}, {"lmbda": -1.0}, {"nope": 1},
                {"batch_size": 1.5}, {"threads": 0}, {"plateau_factor": 1.0}, {"plateau_patience": -1},
                {"plateau_patience": 2.5}):
        with pytest.raises(ConfigError):
            TrainConfig.from_dict(bad)
    assert cfg.eval_interval == 3 and cfg.replace(eval_every=5).eval_interval == 5


def test_eval_loss_by_hand():
    res = {"bpp": 0.5, "per_image": {"a": {"psnr-rgb": 30.0, "ms-ssim-rgb": 0.9},
                                     "b": {"psnr-rgb": 20.0, "ms-ssim-rgb": 0.8}}}
    mse = (255**2 * 1e-3 + 255**2 * 1e-2) / 2
    assert eval_loss(res, 0.01, "mse") == pytest.approx(0.5 + 0.01 * mse)
    assert eval_loss(res, 10.0, "ms-ssim") == pytest.approx(0.5 + 10.0 * 0.15)


def test_gabic_lambda_preset():
    # GABIC Sec. 4: lambda in {0.0067, 0.0130, 0.025, 0.0483}, MSE
    assert parse_lambdas(["gabic"]) == [0.0067, 0.0130, 0.025, 0.0483]
    assert parse_lambdas("0.0035 gabic") == [0.0035, 0.0067, 0.0130, 0.025, 0.0483]
    cfg = TrainConfig(lr_schedule="plateau")
    assert (cfg.plateau_factor, cfg.plateau_patience) == (0.3, 10)  # GABIC Sec. 4


def test_plateau_steps_on_the_evaluation_loss(tiny_config, monkeypatch, tmp_path):
    """patience 0: the main lr drops x0.3 at every evaluation that does not improve; aux lr constant."""
    cfg = tiny_config.replace(steps=4, eval_every=1, lr=1e-3, aux_lr=2e-3, lr_schedule="plateau",
                              plateau_factor=0.3, plateau_patience=0, save_every=100)
    losses = iter([3.0, 3.0, 3.0, 2.0])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"step": self.step, "bpp": 0.0, "psnr-rgb": 0.0,
                                                           "ms-ssim-rgb": 0.0, "eval_loss": next(losses)})
    run = train(cfg.replace(run_dir=str(tmp_path / "a")))
    lrs = [float(r["lr"]) for r in _rows(run / "log.csv")]  # the rate each step ran with
    assert lrs == pytest.approx([1e-3, 1e-3, 3e-4, 9e-5])
    ckpt = torch.load(run / LATEST, weights_only=True)
    assert ckpt["scheduler"]["best"] == 2.0 and ckpt["scheduler"]["num_bad_epochs"] == 0
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(9e-5)
    assert ckpt["aux_optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-3)
    # stop after step 2 and resume: the schedule continues from the saved state
    losses = iter([3.0, 3.0, 3.0, 2.0])
    train(cfg.replace(run_dir=str(tmp_path / "b"), stop_after=2))
    resumed = train(cfg.replace(run_dir=str(tmp_path / "b"), resume=True))
    assert [float(r["lr"]) for r in _rows(resumed / "log.csv")] == pytest.approx(lrs)


def test_plateau_uses_the_real_evaluation(tiny_config):
    tr = Trainer(tiny_config.replace(steps=2, eval_every=1, lr_schedule="plateau", plateau_patience=5))
    run = tr.fit()
    evals = [float(r["eval_loss"]) for r in _rows(run / "eval.csv")]
    assert len(evals) == 2 and tr.scheduler.best == pytest.approx(min(evals), rel=1e-4)  # eval.csv rounds
