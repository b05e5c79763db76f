"""The model a run trains and what a variable-rate run adds: initial weights, the rate points,
how each crop draws its rate, their evaluation.

A variable-rate model (:mod:`gnn_lic.models.variable_rate`) is trained over all its
trade-offs at once; it usually starts from a trained single-rate model
(:func:`init_weights`) and is evaluated at every quality level (:func:`evaluate_rates`).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from gnn_lic.evaluation import SmallImageWarning, evaluate_model
from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import load_state_into, read_checkpoint
from gnn_lic.training.losses import eval_loss

__all__ = ["init_weights", "rate_points", "rate_label", "run_model", "sample_rates", "evaluate_rates"]


def rate_label(model: str, lmbda: float, rate_lambdas: Optional[Sequence[float]] = None) -> str:
    """What a run trains, for progress bars: ``glic lambda=0.0067`` or ``glic lambdas 0.0017-0.05``.

    >>> rate_label("glic", 0.0067), rate_label("glic", 0.05, (0.0017, 0.05))
    ('glic lambda=0.0067', 'glic lambdas 0.0017-0.05')
    """
    if rate_lambdas:
        return f"{model} lambdas {min(rate_lambdas):g}-{max(rate_lambdas):g}"
    return f"{model} lambda={lmbda:g}"


#: parts of a model that ``init_weights`` may leave at their initialisation when the source lacks them
_ADDABLE = ("gain.", "g_a.wavelet.", "g_s.wavelet.")


def init_weights(net: nn.Module, source: str) -> None:
    """Load the weights of ``source`` (a checkpoint file, or ``"pretrained"``: the shipped ones) into ``net``.

    Every parameter and buffer of ``source`` must fit ``net``; ``net`` may have more: the
    gain units of a variable-rate model (``gain.*``) and a wavelet branch the source was trained
    without (``g_a.wavelet.*``, ``g_s.wavelet.*``), which keep their initialisation.
    """
    if source == "pretrained":
        state = create_model(net.model_name, size=net.model_size, pretrained=True).state_dict()
        label = f"the shipped {net.model_name}-{net.model_size} weights"
    else:
        state = read_checkpoint(source, map_location="cpu")["state_dict"]
        label = f"checkpoint '{source}'"
    own = net.state_dict()
    extra = {k: v for k, v in own.items() if k not in state and k.startswith(_ADDABLE)}
    load_state_into(net, {**state, **extra}, source=label)


def run_model(cfg) -> nn.Module:
    """The untrained model of a :class:`~gnn_lic.training.TrainConfig`: its name and size, gain
    units for its ``rate_lambdas`` and its ``wavelet`` choice (refused by a model without one)."""
    from gnn_lic.training.config import ConfigError  # noqa: PLC0415

    kwargs: Dict[str, Any] = {"rate_lambdas": tuple(cfg.rate_lambdas)} if cfg.rate_lambdas else {}
    if cfg.wavelet is not None:
        kwargs["wavelet"] = bool(cfg.wavelet)
    try:
        return create_model(cfg.model, size=cfg.size, **kwargs)
    except TypeError as err:
        if "wavelet" not in kwargs or "wavelet" not in str(err):
            raise
        raise ConfigError(f"model {cfg.model!r} has no wavelet branch; leave --wavelet out") from None


def sample_rates(net: nn.Module, batch: int, sampling: str = "uniform") -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Qualities in ``[1, L]`` (global RNG) and their interpolated lambdas, one per crop;
    ``(None, None)`` for a single-rate model.

    ``sampling``: ``uniform`` (``q = 1 + (L - 1) u``) or ``rising`` (``q = 1 + (L - 1) sqrt(u)``:
    density ``2 (q - 1) / (L - 1)^2``, growing towards the highest rate), ``u`` uniform in [0, 1).
    """
    gain = getattr(net, "gain", None)
    if gain is None:
        return None, None
    u = torch.rand(batch)
    if sampling == "rising":
        u = u.sqrt()
    elif sampling != "uniform":
        raise ValueError(f"unknown rate sampling {sampling!r}; choose uniform or rising")
    quality = 1 + u * (gain.levels - 1)
    return quality, gain.lmbda(quality, batch)


def rate_points(lmbda: float, rate_lambdas: Optional[Sequence[float]]) -> List[Tuple[Optional[int], float]]:
    """``(quality, lambda)`` of each rate a run trains: every level of a variable-rate model, else ``(None, lmbda)``."""
    if rate_lambdas:
        return [(i + 1, float(lam)) for i, lam in enumerate(rate_lambdas)]
    return [(None, float(lmbda))]


def evaluate_rates(net: nn.Module, images, points: Sequence[Tuple[Optional[int], float]], metric: str
                   ) -> Dict[str, Any]:
    r"""Entropy-estimation evaluation at each rate point: the means over the points of bpp,
    PSNR, MS-SSIM and the evaluation loss :math:`R + \lambda D`, and ``bpp-q<l>`` /
    ``psnr-q<l>`` of each quality level."""
    rows = []
    for quality, lam in points:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallImageWarning)
            res = evaluate_model(net, images, entropy_estimation=True, quality=quality)
        rows.append((quality, res, eval_loss(res, lam, metric)))
    out: Dict[str, Any] = {}
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb"):
        out[key] = sum(r[key] for _, r, _ in rows) / len(rows)
    out["eval_loss"] = sum(loss for _, _, loss in rows) / len(rows)
    for quality, res, _ in rows:
        if quality is not None:
            out[f"bpp-q{quality}"] = res["bpp"]
            out[f"psnr-q{quality}"] = res["psnr-rgb"]
    return out
