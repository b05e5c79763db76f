"""Variable-rate training: per-image trade-offs, warm-up, initial weights, the job."""

import csv

import pytest
import torch

from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import load_checkpoint, save_checkpoint
from gnn_lic.training import LATEST, ConfigError, RateDistortionLoss, Trainer, train
from gnn_lic.training.rates import init_weights, rate_label, run_model, sample_rates
from gnn_lic.training.optim import LRSchedule

LAMBDAS = [0.004, 0.016, 0.064]


def test_per_image_lambdas_match_the_sum_of_single_image_losses():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    x_hat = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    lik = {"y": torch.rand(3, 4, 2, 2) * 0.9 + 0.05, "z": torch.rand(3, 2, 1, 1) * 0.9 + 0.05}
    lam = torch.tensor([0.001, 0.01, 0.1])
    crit = RateDistortionLoss(metric="mse")
    got = crit({"x_hat": x_hat, "likelihoods": lik}, x, lmbda=lam)["loss"]
    want = 0.0
    for i in range(3):  # brute force: each image alone with its own trade-off, then the mean
        one = RateDistortionLoss(float(lam[i]), "mse")({"x_hat": x_hat[i:i + 1],
                                                         "likelihoods": {k: v[i:i + 1] for k, v in lik.items()}},
                                                        x[i:i + 1])
        want += float(one["loss"]) / 3
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_warmup_ramps_then_follows_the_schedule():
    s = LRSchedule("step", 10, warmup=4)
    assert [s(k) for k in range(10)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 0.1, 0.1])
    assert LRSchedule("constant", 10)(0) == 1.0


def test_warmup_is_refused_with_plateau(tiny_config):
    with pytest.raises(ConfigError, match="warmup"):
        tiny_config.replace(warmup=2, lr_schedule="plateau")


def test_init_weights_keeps_gains_and_refuses_other_models(tmp_path):
    torch.manual_seed(0)
    single = create_model("glic", size="tiny")
    path = save_checkpoint(tmp_path / "one.pt", single, step=1)
    net = create_model("glic", size="tiny", rate_lambdas=LAMBDAS)
    start = net.gain.log_gain.detach().clone()
    init_weights(net, str(path))
    for k, v in single.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    assert torch.equal(net.gain.log_gain, start)
    other = save_checkpoint(tmp_path / "other.pt", create_model("gabic", size="tiny"), step=1)
    with pytest.raises(Exception, match="does not fit"):
        init_weights(create_model("glic", size="tiny", rate_lambdas=LAMBDAS), str(other))


def test_init_weights_adds_a_wavelet_branch_to_weights_trained_without(tmp_path):
    torch.manual_seed(0)
    without = create_model("glic", size="tiny", wavelet=False)
    path = save_checkpoint(tmp_path / "without.pt", without, step=1)
    net = create_model("glic", size="tiny", rate_lambdas=LAMBDAS)
    start = {k: v.clone() for k, v in net.state_dict().items() if ".wavelet." in k}
    assert start
    init_weights(net, str(path))
    for k, v in without.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    for k, v in start.items():
        assert torch.equal(net.state_dict()[k], v), k
    with pytest.raises(Exception, match="unexpected keys.*wavelet"):  # but never drops one
        init_weights(without, str(save_checkpoint(tmp_path / "with.pt", net, step=1)))


def test_variable_rate_run_trains_the_gains_and_evaluates_every_level(tiny_config, tmp_path):
    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "init.pt", create_model("glic", size="tiny"), step=1)
    cfg = tiny_config.replace(rate_lambdas=LAMBDAS, init=str(init), eval_every=4, warmup=2)
    trainer = Trainer(cfg)
    start = trainer.net.gain.log_gain.detach().clone()
    run = trainer.fit()
    net, ckpt = load_checkpoint(run / LATEST)
    assert net.qualities == 3 and ckpt["config"]["rate_lambdas"] == LAMBDAS
    assert not torch.equal(net.gain.log_gain, start)  # the gains are trained
    with open(run / "eval.csv", newline="") as fh:
        row = list(csv.DictReader(fh))[-1]
    bpps = [float(row[f"bpp-q{q}"]) for q in (1, 2, 3)]
    assert float(row["bpp"]) == pytest.approx(sum(bpps) / 3, rel=1e-4)
    with pytest.raises(ConfigError, match="rate_lambdas"):  # a different rate set cannot resume it
        train(cfg.replace(rate_lambdas=[0.01, 0.02], resume=True))


def test_rate_label_names_the_lambda_range_of_a_variable_rate_run():
    assert rate_label("glic", 0.0067) == "glic lambda=0.0067"
    assert rate_label("glic", 0.05, (0.0017, 0.0067, 0.05)) == "glic lambdas 0.0017-0.05"
    assert rate_label("gabic", 0.013, ()) == "gabic lambda=0.013"


def test_rate_sampling_uniform_and_rising_against_their_distributions():
    net = create_model("glic", size="tiny", rate_lambdas=LAMBDAS)  # qualities 1..3
    torch.manual_seed(0)
    u = torch.rand(20000)
    torch.manual_seed(0)
    q, lam = sample_rates(net, 20000, "uniform")
    assert torch.allclose(q, 1 + 2 * u) and torch.allclose(lam, net.gain.lmbda(q, 20000))
    torch.manual_seed(0)
    q, _ = sample_rates(net, 20000, "rising")
    assert torch.allclose(q, 1 + 2 * u.sqrt())
    # density 2 (q - 1) / (L - 1)^2: P(q <= 2) = 1/4 (uniform: 1/2)
    assert float((q <= 2).float().mean()) == pytest.approx(0.25, abs=0.01)
    with pytest.raises(ValueError, match="rate sampling"):
        sample_rates(net, 4, "falling")
    assert sample_rates(create_model("glic", size="tiny"), 4, "rising") == (None, None)


def test_wavelet_option_builds_the_branch_or_refuses(tiny_config):
    on, off = run_model(tiny_config), run_model(tiny_config.replace(wavelet=False))
    assert on.wavelet and not off.wavelet and off.model_config["wavelet"] is False
    assert sum(p.numel() for p in off.parameters()) < sum(p.numel() for p in on.parameters())
    with pytest.raises(ConfigError, match="no wavelet branch"):
        run_model(tiny_config.replace(model="gabic", wavelet=True))
    with pytest.raises(ConfigError, match="rate_sampling"):
        tiny_config.replace(rate_sampling="falling")


def test_wavelet_choice_is_part_of_the_run_identity(tiny_config):
    run = train(tiny_config.replace(wavelet=False, steps=2))
    net, ckpt = load_checkpoint(run / LATEST)
    assert not net.wavelet and ckpt["config"]["wavelet"] is False
    with pytest.raises(ConfigError, match="wavelet"):  # the other branch setting cannot resume it
        train(tiny_config.replace(wavelet=True, steps=3, resume=True))
