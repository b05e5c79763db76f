"""Training: rate-distortion loss, optimizers, data, the loop and DDP plumbing.

Submodules: :mod:`.losses` (:class:`RateDistortionLoss`), :mod:`.optim` (main/aux Adam,
LR schedules, clipping), :mod:`.data` (per-step deterministic crops; the image
sets are :mod:`gnn_lic.evaluation.images`, re-exported here), :mod:`.loop` (:func:`train`,
:class:`Trainer`), :mod:`.runinfo` (env.json, CSV logs, RNG states), :mod:`.distributed`
(``torchrun`` process groups, DDP), :mod:`.config` (:class:`TrainConfig`, lambda presets, YAML),
:mod:`.options` (the job's command line, generated from the config fields), :mod:`.job`
(the main job, ``experiments/run.py``).
"""

from gnn_lic.evaluation.images import SKIMAGE_TEST, SKIMAGE_TRAIN, DataError, builtin_images, load_image_folder, load_images

from .config import DEFAULT_LAMBDAS, LAMBDA_PRESETS, ConfigError, TrainConfig, dump_yaml, load_yaml, parse_lambdas
from .data import RandomCrops
from .distributed import DistContext, init_distributed
from .losses import RateDistortionLoss, bpp_from_likelihoods
from .loop import BEST, LATEST, Trainer, environment_info, eval_loss, train
from .optim import LRSchedule, configure_optimizers, grad_norm_and_clip, make_scheduler, split_parameters

__all__ = [
    "RateDistortionLoss",
    "bpp_from_likelihoods",
    "split_parameters",
    "configure_optimizers",
    "LRSchedule",
    "make_scheduler",
    "grad_norm_and_clip",
    "RandomCrops",
    "DataError",
    "SKIMAGE_TRAIN",
    "SKIMAGE_TEST",
    "builtin_images",
    "load_image_folder",
    "load_images",
    "TrainConfig",
    "ConfigError",
    "LAMBDA_PRESETS",
    "DEFAULT_LAMBDAS",
    "parse_lambdas",
    "load_yaml",
    "dump_yaml",
    "DistContext",
    "init_distributed",
    "Trainer",
    "train",
    "environment_info",
    "eval_loss",
    "LATEST",
    "BEST",
]
