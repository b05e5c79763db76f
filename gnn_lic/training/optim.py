"""Optimizers and learning-rate schedules (per training step, or on a plateau of the evaluation loss).

Two Adam optimizers, as in CompressAI's training example: the **main** one updates
every parameter except the entropy bottlenecks' ``quantiles``, which the **aux** one
fits to ``net.aux_loss()``. :func:`split_parameters` asserts that the two groups are
disjoint and together cover every trainable parameter.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple, Union

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

__all__ = ["split_parameters", "configure_optimizers", "LRSchedule", "make_scheduler", "grad_norm_and_clip", "extend_schedule",
           "PER_STEP_SCHEDULES"]

#: schedules stepped once per training step; ``plateau`` is stepped on evaluation losses instead
PER_STEP_SCHEDULES = ("step", "cosine", "constant")

AUX_SUFFIX = "quantiles"


def split_parameters(net: nn.Module) -> Tuple[List[str], List[str]]:
    """Names of the main and aux parameters of ``net`` (trainable ones only).

    Aux parameters are those whose name ends with ``quantiles``. Raises ``AssertionError``
    if the two groups overlap or miss a trainable parameter.
    """
    named = {n: p for n, p in net.named_parameters() if p.requires_grad}
    main = [n for n in named if not n.endswith(AUX_SUFFIX)]
    aux = [n for n in named if n.endswith(AUX_SUFFIX)]
    main_set, aux_set = set(main), set(aux)
    assert not (main_set & aux_set), f"parameters in both groups: {sorted(main_set & aux_set)}"
    assert main_set | aux_set == set(named), f"parameters in no group: {sorted(set(named) - main_set - aux_set)}"
    assert len(main) + len(aux) == len(named)
    return main, aux


def configure_optimizers(
    net: nn.Module, lr: float = 1e-4, aux_lr: float = 1e-3
) -> Tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """``(main Adam, aux Adam)`` over the groups of :func:`split_parameters`.

    A model without ``quantiles`` gets an aux optimizer with no parameters that does nothing.
    Both use PyTorch's fused Adam kernel where the parameters' device has one (CPU and CUDA do):
    the same update as the per-tensor loop, several times faster on the CPU.
    """
    main, aux = split_parameters(net)
    params: Dict[str, nn.Parameter] = dict(net.named_parameters())
    aux_params = [params[n] for n in aux]
    if not aux_params:  # Adam refuses an empty list; a zero-size placeholder keeps the code uniform
        aux_params = [nn.Parameter(torch.zeros(0, device=next(net.parameters()).device))]
    return _adam([params[n] for n in main], lr), _adam(aux_params, aux_lr)


def _adam(params, lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # no fused kernel for this device
        return torch.optim.Adam(params, lr=lr)


class LRSchedule:
    """Multiplier of the base learning rate at step ``s`` (for :class:`~torch.optim.lr_scheduler.LambdaLR`).

    * ``step``: 1 until ``drop_at * steps``, then ``factor`` (0.1);
    * ``cosine``: ``min_factor + (1 - min_factor) * (1 + cos(pi * s / steps)) / 2``;
    * ``constant``: 1;

    times ``min(1, (s + 1) / warmup)`` during the first ``warmup`` steps (a linear warm-up,
    which also protects trained weights from the first steps of a fresh Adam state).

    A plain object (not a closure): ``LambdaLR.state_dict()`` stores its attributes,
    so the schedule survives a checkpoint round trip with ``weights_only=True``.

    >>> [LRSchedule("step", 10)(s) for s in (0, 7, 8, 9)]
    [1.0, 1.0, 0.1, 0.1]
    """

    def __init__(self, kind: str, steps: int, drop_at: float = 0.8, factor: float = 0.1, min_factor: float = 0.0,
                 warmup: int = 0):
        if kind not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.kind = kind
        self.steps = int(steps)
        self.drop_step = max(1, int(math.floor(drop_at * steps))) if kind == "step" else 0
        self.factor = float(factor)
        self.min_factor = float(min_factor)
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        ramp = min(1.0, (step + 1) / self.warmup) if getattr(self, "warmup", 0) > 0 else 1.0
        if self.kind == "step":
            return ramp * (1.0 if step < self.drop_step else self.factor)
        if self.kind == "cosine":
            t = min(step, self.steps) / max(self.steps, 1)
            return ramp * (self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t)))
        return ramp

    def __repr__(self) -> str:
        return (f"LRSchedule(kind={self.kind!r}, steps={self.steps}, drop_step={self.drop_step}, "
                f"warmup={self.warmup})")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: str,
    steps: int,
    drop_at: float = 0.8,
    plateau_factor: float = 0.3,
    plateau_patience: int = 10,
    warmup: int = 0,
) -> Union[LambdaLR, ReduceLROnPlateau]:
    """The scheduler of ``kind``.

    ``step``, ``cosine``, ``constant``: ``LambdaLR`` over :class:`LRSchedule`; call
    ``scheduler.step()`` once per training step; ``warmup`` steps of linear warm-up.

    ``plateau``: ``ReduceLROnPlateau(mode="min", factor=plateau_factor,
    patience=plateau_patience)`` (GABIC Sec. 4: factor 0.3, patience 10); call
    ``scheduler.step(loss)`` once per evaluation. The rate is multiplied by the factor
    at the evaluation that makes ``patience + 1`` in a row without a (relative 1e-4)
    improvement of the best loss.

    >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> sched = make_scheduler(opt, "plateau", 0, plateau_factor=0.5, plateau_patience=1)
    >>> for loss in (3.0, 3.0, 3.0):
    ...     sched.step(loss)
    >>> opt.param_groups[0]["lr"]
    0.5
    """
    if kind == "plateau":
        if warmup:
            raise ValueError("warm-up is for the per-step schedules, not 'plateau'")
        return ReduceLROnPlateau(optimizer, mode="min", factor=plateau_factor, patience=plateau_patience)
    return LambdaLR(optimizer, LRSchedule(kind, steps, drop_at, warmup=warmup))


def extend_schedule(scheduler: Union[LambdaLR, ReduceLROnPlateau], steps: int, drop_at: float = 0.8) -> None:
    """Stretch a resumed run's per-step schedule to ``steps`` (a run extended with more steps); plateau: nothing to do."""
    if not isinstance(scheduler, LambdaLR):  # plateau: nothing depends on the number of steps
        return
    old = scheduler.lr_lambdas[0]
    if getattr(old, "steps", steps) != steps:
        scheduler.lr_lambdas[0] = LRSchedule(old.kind, steps, drop_at, warmup=getattr(old, "warmup", 0))


def grad_norm_and_clip(params, max_norm: float) -> float:
    """Total L2 gradient norm (before clipping); clips to ``max_norm`` when it is > 0."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(params, limit, error_if_nonfinite=False))
