"""Optimizer groups, LR schedules and clipping."""

import io
import math

import pytest
import torch
from torch import nn

from gnn_lic.models import create_model
from gnn_lic.training import LRSchedule, configure_optimizers, grad_norm_and_clip, make_scheduler, split_parameters


@pytest.mark.parametrize("name", ["glic", "gabic"])
def test_groups_disjoint_and_complete(name):
    net = create_model(name, size="tiny")
    main, aux = split_parameters(net)
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert aux and all(n.endswith("quantiles") for n in aux)
    assert not set(main) & set(aux)
    assert set(main) | set(aux) == names
    opt, aux_opt = configure_optimizers(net, lr=1e-4, aux_lr=1e-3)
    ids_main = {id(p) for g in opt.param_groups for p in g["params"]}
    ids_aux = {id(p) for g in aux_opt.param_groups for p in g["params"]}
    assert not ids_main & ids_aux
    assert ids_main | ids_aux == {id(p) for p in net.parameters() if p.requires_grad}
    assert opt.param_groups[0]["lr"] == 1e-4 and aux_opt.param_groups[0]["lr"] == 1e-3


def test_frozen_parameters_and_models_without_quantiles():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    net[0].weight.requires_grad_(False)
    main, aux = split_parameters(net)
    assert main == ["0.bias", "1.weight", "1.bias"] and aux == []
    opt, aux_opt = configure_optimizers(net)
    aux_opt.step()  # the placeholder group is harmless
    assert len(opt.param_groups[0]["params"]) == 3


def test_lr_schedules():
    assert [LRSchedule("step", 10)(s) for s in (0, 7, 8, 9)] == [1.0, 1.0, 0.1, 0.1]
    cos = LRSchedule("cosine", 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert LRSchedule("constant", 10)(9) == 1.0
    with pytest.raises(ValueError):
        LRSchedule("linear", 10)


def test_scheduler_state_survives_weights_only_round_trip():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = make_scheduler(opt, "step", steps=10, drop_at=0.5)
    for _ in range(6):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = make_scheduler(opt2, "constant", steps=99)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.lr_lambdas[0].kind == "step" and sched2.last_epoch == 6
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


def test_grad_norm_and_clip():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert grad_norm_and_clip([a, b], 1.0) == pytest.approx(5.0)
    total = math.sqrt(float((a.grad**2).sum() + (b.grad**2).sum()))
    assert total == pytest.approx(1.0, rel=1e-4)
    a.grad = torch.tensor([3.0, 0.0])
    assert grad_norm_and_clip([a], 0) == pytest.approx(3.0) and float(a.grad[0]) == 3.0  # 0: no clipping
    a.grad = torch.tensor([float("nan"), 0.0])
    assert math.isnan(grad_norm_and_clip([a], 1.0))
    assert grad_norm_and_clip([nn.Parameter(torch.zeros(1))], 1.0) == 0.0  # no gradients at all


@pytest.mark.parametrize("patience", [0, 2, 10])
def test_plateau_reduces_after_patience_plus_one_bad_evaluations(patience):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-4)
    sched = make_scheduler(opt, "plateau", steps=100, plateau_factor=0.3, plateau_patience=patience)
    lrs = []
    for loss in [5.0, 4.0] + [4.0] * (patience + 1):  # two improvements, then patience + 1 bad evaluations
        sched.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:-1] == [1e-4] * (patience + 2)
    assert lrs[-1] == pytest.approx(0.3e-4)
    sched.step(1.0)  # an improvement resets the count
    sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3e-4 * (0.3 if patience == 0 else 1.0))
    # its state loads with weights_only (checkpoints)
    buf = io.BytesIO()
    torch.save({"scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["scheduler"]
    assert state["best"] == 1.0 and state["patience"] == patience and state["factor"] == 0.3


def test_per_step_schedules_still_lambda():
    opt = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert isinstance(make_scheduler(opt, "cosine", 10), torch.optim.lr_scheduler.LambdaLR)
    assert isinstance(make_scheduler(opt, "plateau", 10), torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_both_optimizers_are_fused_adam_with_the_loop_versions_update():
    torch.manual_seed(0)
    net, twin = create_model("glic", size="tiny"), create_model("glic", size="tiny")
    twin.load_state_dict(net.state_dict())
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    fused, fused_aux = configure_optimizers(net, lr=1e-3, aux_lr=1e-2)
    assert fused.defaults["fused"] and fused_aux.defaults["fused"]
    main, _ = split_parameters(twin)
    params = dict(twin.named_parameters())
    plain = torch.optim.Adam([params[n] for n in main], lr=1e-3)  # the per-tensor loop
    for _ in range(3):
        for a, b in zip(net.parameters(), twin.parameters()):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for name in main:
        a, b = dict(net.named_parameters())[name], params[name]
        assert not torch.equal(a, start[name]), name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
