"""Evaluation tools: metrics, Bjontegaard deltas, results files, classical anchors,
RD plots, model complexity and rate-distortion evaluation of learned codecs.

Submodules: :mod:`.metrics`, :mod:`.bd`, :mod:`.results`, :mod:`.anchors`,
:mod:`.plot`, :mod:`.complexity`, :mod:`.evaluate`, :mod:`.images` (image sets),
:mod:`.report` (the report of a job); command line in ``__main__``
(``python -m gnn_lic.evaluation {anchors,bd,plot}``).
"""

from .anchors import available_codecs, measure_anchors, measure_codec
from .bd import bd_psnr, bd_quality, bd_rate, bd_table, format_bd_table
from .complexity import count_flops, count_parameters, measure_latency, peak_memory, profile_model
from .evaluate import evaluate_model, evaluate_models
from .images import DataError, load_image_folder, load_images
from .metrics import MS_SSIM_MIN_SIZE, SmallImageWarning, bpp, ms_ssim, ms_ssim_db, psnr
from .plot import plot_rd, rd_figure
from .results import (
    get_metric,
    load_reference,
    load_results,
    make_results,
    save_results,
    shared_root,
    sort_results,
)

__all__ = [
    "psnr",
    "ms_ssim",
    "ms_ssim_db",
    "bpp",
    "MS_SSIM_MIN_SIZE",
    "SmallImageWarning",
    "bd_rate",
    "bd_psnr",
    "bd_quality",
    "bd_table",
    "format_bd_table",
    "make_results",
    "save_results",
    "load_results",
    "load_reference",
    "get_metric",
    "sort_results",
    "shared_root",
    "available_codecs",
    "measure_anchors",
    "measure_codec",
    "load_images",
    "load_image_folder",
    "DataError",
    "plot_rd",
    "rd_figure",
    "count_parameters",
    "count_flops",
    "measure_latency",
    "peak_memory",
    "profile_model",
    "evaluate_model",
    "evaluate_models",
]
