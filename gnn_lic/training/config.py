"""Training configuration: one dataclass, its defaults, and YAML round trips.

:class:`TrainConfig` describes the training of **one** rate point (one lambda);
:mod:`gnn_lic.training.job` builds one per lambda of a job. Its fields are the one source
of the training options: each carries its help text (and bounds) as dataclass metadata,
and the command line of ``experiments/run.py`` is generated from them
(:mod:`gnn_lic.training.options`); ``python experiments/run.py --help`` lists them with
their defaults.

The defaults are those of the main job (``python experiments/run.py --model glic``),
sized so that the whole job -- one variable-rate model over two lambdas, training and evaluation -- fits in 15
minutes on a 2-core CPU with the ``small`` models (the README's "Measured figures" has
the step times this was sized with). The paper trains at a learning rate of 1e-4 for
about 1.5M steps; a job this short learns more with 1e-3.

The lambda presets ``mse`` and ``ms-ssim`` are the GLIC paper's (Sec. 4.1.1): ``mse`` with
the distortion ``255^2 * MSE`` and ``ms-ssim`` with ``1 - MS-SSIM`` (CompressAI's convention).
``gabic`` is the GABIC paper's four MSE lambdas (GABIC Sec. 4, "Training").

GABIC's training recipe (GABIC Sec. 4: Adam at 1e-4, batch 16, 256x256 crops, MSE, the
``gabic`` lambdas, learning rate x0.3 on a plateau with patience 10) is
``experiments/configs/gabic.yaml``: ``lr_schedule: plateau`` with ``plateau_factor: 0.3``
and ``plateau_patience: 10`` (the paper's patience; GABIC counts it in epochs, this loop
in evaluations).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from gnn_lic.models.zoo import QUALITY_LAMBDAS
from gnn_lic.utils import atomic_write

__all__ = [
    "TrainConfig",
    "ConfigError",
    "LAMBDA_PRESETS",
    "DEFAULT_LAMBDAS",
    "METRICS",
    "LR_SCHEDULES",
    "parse_lambdas",
    "load_yaml",
    "dump_yaml",
]

#: GLIC paper lambdas (Sec. 4.1.1) for the MSE and MS-SSIM models (the zoo's qualities 1..6);
#: GABIC paper lambdas (Sec. 4, MSE)
LAMBDA_PRESETS: Dict[str, List[float]] = {
    "mse": list(QUALITY_LAMBDAS["mse"]),
    "ms-ssim": list(QUALITY_LAMBDAS["ms-ssim"]),
    "gabic": [0.0067, 0.0130, 0.0250, 0.0483],
}

#: the main job's default: two points of the paper's preset, so that it fits in 15 min on a 2-core CPU
DEFAULT_LAMBDAS: Dict[str, List[float]] = {
    "mse": [0.0067, 0.0250],
    "ms-ssim": [8.0, 36.0],
}

METRICS = ("mse", "ms-ssim")
#: options that must match to resume a run at all
IDENTITY_KEYS = ("model", "size", "wavelet", "metric", "lmbda", "rate_lambdas")
#: options whose change makes a resumed run differ from an uninterrupted one
TRAJECTORY_KEYS = ("batch_size", "patch_size", "seed", "lr", "aux_lr", "lr_schedule", "lr_drop", "warmup", "plateau_factor",
                   "plateau_patience", "clip_max_norm", "ortho_weight", "flips", "data_train", "steps", "init",
                   "rate_sampling")
LR_SCHEDULES = ("step", "cosine", "constant", "plateau")
#: how a variable-rate step draws each crop's quality (:func:`gnn_lic.training.rates.sample_rates`)
RATE_SAMPLINGS = ("uniform", "rising")


class ConfigError(ValueError):
    """A bad option value; the message is one line meant for the user."""


def _option(default: Any, help: str = "", cli: bool = True, **meta: Any) -> Any:  # noqa: A002
    """A dataclass field whose metadata describes its command-line option.

    ``help``: the option's help text; ``cli=False``: set by the job, not a flag;
    ``min``: smallest allowed integer; ``choices``: allowed values; ``metavar``;
    ``job_default``: the job's default when it differs from the field's.
    """
    return field(default=default, metadata={"help": help, "cli": cli, **meta})


@dataclass
class TrainConfig:
    """Everything that defines the training of one rate point.

    Args:
        model (str): registered model name (:func:`gnn_lic.models.list_models`).
        size (str): ``tiny``, ``small`` or ``paper``.
        wavelet (bool or None): GLIC's auxiliary wavelet branch (AuxT) on or off; None: the
            size's preset. Models without the branch refuse it.
        lmbda (float): rate-distortion trade-off of :class:`~gnn_lic.training.RateDistortionLoss`.
        metric (str): ``mse`` or ``ms-ssim``.
        steps (int): optimizer steps in total (a resumed run continues up to it).
        batch_size (int): crops per step and per process.
        patch_size (int): side of the square training crops.
        lr (float), aux_lr (float): Adam learning rates of the main and aux optimizers.
        lr_schedule (str): ``step``, ``cosine``, ``constant`` or ``plateau``; ``lr_drop`` is the
            fraction of ``steps`` after which ``step`` multiplies the rate by 0.1.
        warmup (int): steps of linear learning-rate warm-up of ``step``/``cosine``/``constant``.
        plateau_factor (float), plateau_patience (int): with ``plateau``, the main learning rate
            is multiplied by ``plateau_factor`` once the evaluation loss has not improved for
            more than ``plateau_patience`` consecutive evaluations (PyTorch's
            ``ReduceLROnPlateau``, stepped on the evaluation loss of every ``eval_every``).
        clip_max_norm (float): gradient-norm clipping (``<= 0``: no clipping).
        ortho_weight (float): weight of ``net.ortho_loss()`` when the wavelet branch is on.
        flips (bool): random horizontal and vertical flips of the crops.
        data_train, data_test (str or None): image folders; None: the built-in scikit-image split
            (:mod:`gnn_lic.training.data`).
        run_dir (str or None): the run folder; None: ``<out>/<model>-<size>-<metric>-lambda<lmbda>``.
        out (str): parent of ``run_dir`` when that is not given.
        resume (bool): continue from ``<run_dir>/checkpoints/latest.pt``.
        device (str): ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        seed (int): seeds the model initialisation, the crops and the quantisation noise.
        threads (int or None): ``torch.set_num_threads``; None: the CPU count divided by the
            number of local processes.
        eval_every, save_every (int): steps between evaluations / ``latest.pt`` saves
            (0: four times per run); both also happen after the last step.
        log_every (int): steps between rows of ``log.csv``.
        stop_after (int or None): stop (and save ``latest.pt``) after this step, as a
            preempted job would; ``--resume`` continues it.
        deterministic (bool): ``torch.use_deterministic_algorithms(True)``.
        progress (bool): show a tqdm progress bar (rank 0 only).
        variable_rate (bool or None): the job trains one variable-rate model over its lambdas;
            None: when it has two or more lambdas.
        rate_lambdas (list of float or None): set by the job for a variable-rate run: the
            model gets gain units with one quality per lambda
            (:mod:`gnn_lic.models.variable_rate`); each crop of a step draws a quality
            in ``[1, L]`` (``rate_sampling``) and is trained with its interpolated lambda (``lmbda``
            is then unused).
        rate_sampling (str): how those qualities are drawn: ``uniform`` in ``[1, L]``, or
            ``rising`` (density growing linearly towards quality ``L``:
            ``q = 1 + (L - 1) sqrt(u)``, ``u`` uniform), which gives the high-rate end, slowest to
            train, more crops.
        init (str or None): initial weights (ignored when resuming from ``latest.pt``).
    """

    model: str = _option("glic", "registered model name (required unless --resume/--checkpoint)", job_default=None)
    size: str = _option("small", "model size: tiny, small or paper")
    wavelet: Optional[bool] = _option(None, "GLIC's auxiliary wavelet branch (AuxT) [default: the size's preset]")
    lmbda: float = _option(0.0067, cli=False)
    metric: str = _option("mse", "distortion: mse (255^2 MSE) or ms-ssim (1 - MS-SSIM)", choices=METRICS)
    steps: int = _option(300, "optimizer steps of each model (one per lambda, or the variable-rate one)", min=1)
    batch_size: int = _option(8, "crops per step (per process)", min=1)
    patch_size: int = _option(128, "training crop side in pixels", min=1)
    lr: float = _option(1e-3, "learning rate of the main Adam")
    aux_lr: float = _option(1e-3, "learning rate of the aux Adam (quantiles)")
    lr_schedule: str = _option(
        "step", "step (x0.1 at --lr-drop of the steps), cosine, constant, or plateau (x --plateau-factor when the "
        "evaluation loss has not improved for more than --plateau-patience evaluations)", choices=LR_SCHEDULES)
    warmup: int = _option(0, "steps of linear learning-rate warm-up (per-step schedules)", min=0)
    lr_drop: float = _option(0.8, "fraction of the steps after which 'step' divides the lr by 10")
    plateau_factor: float = _option(0.3, "learning-rate factor of 'plateau' (GABIC: 0.3)")
    plateau_patience: int = _option(10, "evaluations without improvement that 'plateau' tolerates (GABIC: 10 epochs)",
                                    min=0)
    clip_max_norm: float = _option(1.0, "gradient-norm clipping (0: off)")
    ortho_weight: float = _option(0.1, "weight of the wavelet branch's orthogonality loss")
    flips: bool = _option(True, "random flips of the training crops")
    data_train: Optional[str] = _option(
        None, "folder of training images (default: built-in scikit-image photos)", metavar="DIR")
    data_test: Optional[str] = _option(
        None, "folder of test images (default: built-in chelsea, coffee)", metavar="DIR")
    run_dir: Optional[str] = _option(None, cli=False)
    out: str = _option("runs", "parent folder of the job folders", metavar="DIR")
    resume: bool = _option(False, cli=False)
    device: str = _option("auto", "auto, cpu, cuda or cuda:N")
    seed: int = _option(0, "random seed", min=0)
    threads: Optional[int] = _option(None, "torch threads per process (default: torch's / CPUs per process)", min=1)
    eval_every: int = _option(0, "steps between test evaluations (0: 4 per run)", min=0)
    save_every: int = _option(0, "steps between latest.pt saves (0: 4 per run)", min=0)
    log_every: int = _option(1, "steps between log.csv rows", min=1)
    stop_after: Optional[int] = _option(None, "stop after this step (as if preempted); --resume continues", min=1)
    deterministic: bool = _option(False, "torch.use_deterministic_algorithms(True)")
    progress: bool = _option(True, "tqdm progress bar")
    variable_rate: Optional[bool] = _option(
        None, "train one variable-rate model (gain units, one quality per lambda) instead of one model per lambda "
        "[default: on with two or more lambdas]")
    rate_lambdas: Optional[List[float]] = _option(None, cli=False)
    rate_sampling: str = _option("uniform", "qualities of a variable-rate step: uniform, or rising (more crops at "
                                 "high rates)", choices=RATE_SAMPLINGS)
    init: Optional[str] = _option(
        None, "start from these weights: a checkpoint file, or 'pretrained' for the shipped ones; parameters they "
        "lack (gain units, a wavelet branch) keep their initialisation", metavar="CKPT")

    # ------------------------------------------------------------------ helpers
    @classmethod
    def fields(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (``-`` in keys read as ``_``); unknown keys raise :class:`ConfigError`."""
        known = set(cls.fields())
        clean = {}
        for key, value in values.items():
            k = str(key).replace("-", "_")
            if k not in known:
                raise ConfigError(f"unknown training option {key!r}")
            clean[k] = value
        cfg = cls(**clean)
        cfg.validate()
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (JSON/YAML-able, loadable with ``torch.load(weights_only=True)``)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def resume_changes(self, saved: Mapping[str, Any], where: str) -> List[str]:
        """The trajectory options that differ from ``saved`` (the config of the run to resume).

        Raises :class:`ConfigError` when an identity option (model, size, metric, lambda) differs.
        """
        for key in IDENTITY_KEYS:
            if key in saved and saved[key] != getattr(self, key):
                raise ConfigError(f"cannot resume {where}: it was trained with {key}={saved[key]!r}, "
                                  f"not {getattr(self, key)!r}")
        return [k for k in TRAJECTORY_KEYS if k in saved and saved[k] != getattr(self, k)]

    @property
    def eval_interval(self) -> int:
        return self.eval_every if self.eval_every > 0 else max(1, math.ceil(self.steps / 4))

    @property
    def save_interval(self) -> int:
        return self.save_every if self.save_every > 0 else max(1, math.ceil(self.steps / 4))

    def validate(self) -> None:
        """Check types and ranges; raise :class:`ConfigError` with a one-line message."""
        from gnn_lic.models import SIZES, list_models  # noqa: PLC0415 - the models register on import

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(self.model in list_models(),
             f"unknown model {self.model!r}; choose one of: {', '.join(list_models()) or 'none'}")
        need(self.size in SIZES, f"unknown size {self.size!r}; choose one of: {', '.join(SIZES)}")

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", "Optional[int]") and not (v is None and f.type.startswith("Optional")):
                need(isinstance(v, int) and not isinstance(v, bool), f"{f.name} must be an integer, got {v!r}")
                lo = f.metadata.get("min")
                need(lo is None or v >= lo, f"{f.name} must be >= {lo}, got {v}")
            elif f.type == "float":
                need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                     f"{f.name} must be a finite number, got {v!r}")
                setattr(self, f.name, float(v))
            choices = f.metadata.get("choices")
            need(choices is None or v in choices,
                 f"unknown {f.name} {v!r}; choose one of: {', '.join(choices or ())}")
        need(self.patch_size >= 16, f"patch_size must be >= 16, got {self.patch_size}")
        need(self.lmbda > 0, f"lambda must be > 0, got {self.lmbda}")
        need(self.lr > 0 and self.aux_lr > 0, "learning rates must be > 0")
        if self.rate_lambdas is not None:
            from gnn_lic.models.variable_rate import check_rate_lambdas  # noqa: PLC0415

            try:
                self.rate_lambdas = list(check_rate_lambdas(self.rate_lambdas))
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc)) from None
        need(0 < self.lr_drop <= 1, f"lr_drop must be in (0, 1], got {self.lr_drop}")
        need(not (self.warmup and self.lr_schedule == "plateau"), "warmup is for the per-step schedules, not plateau")
        need(0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}")


def parse_lambdas(values: Union[None, str, float, List[Any]], metric: str = "mse") -> List[float]:
    """Lambdas from a mix of numbers and preset names (``mse``, ``ms-ssim``, ``gabic``, ``default``).

    >>> parse_lambdas(["mse"])[:2]
    [0.0017, 0.0035]
    >>> parse_lambdas("0.01 0.02")
    [0.01, 0.02]
    """
    if values is None:
        return list(DEFAULT_LAMBDAS[metric])
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    elif not isinstance(values, (list, tuple)):
        values = [values]
    out: List[float] = []
    for v in values:
        if isinstance(v, str) and v.strip().lower() in LAMBDA_PRESETS:
            out.extend(LAMBDA_PRESETS[v.strip().lower()])
        elif isinstance(v, str) and v.strip().lower() == "default":
            out.extend(DEFAULT_LAMBDAS[metric])
        else:
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"bad lambda {v!r}: use numbers or a preset ({', '.join(LAMBDA_PRESETS)}, default)"
                ) from None
            if not (math.isfinite(f) and f > 0):
                raise ConfigError(f"lambda must be a positive number, got {v!r}")
            out.append(f)
    if not out:
        raise ConfigError("no lambdas given")
    # keep the order given, drop repeats
    seen, unique = set(), []
    for f in out:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a YAML mapping of options (keys with ``-`` or ``_``); one-line :class:`ConfigError`s."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        with open(p) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())[:160]
        raise ConfigError(f"config file '{p}' is not valid YAML ({first})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{p}': {exc.strerror or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of options, not a {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def dump_yaml(values: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Write ``values`` as block-style YAML (keys in the given order)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(values), sort_keys=False, default_flow_style=False)
    return atomic_write(p, text.encode("utf-8"))
