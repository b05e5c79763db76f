"""Analysis tools: effective receptive fields, graph maps and bit allocation.

What the GLIC paper shows in Figs. 6-7 and the GABIC paper in Fig. 5, as functions
that return tensors and numbers (the notebooks in ``notebooks/`` only plot them):

* :func:`effective_receptive_field`, :func:`average_erf`, :func:`erf_mass_area`,
  :func:`erf_difference` -- Luo et al.'s ERF of any stage of ``g_a``;
* :func:`graph_stages`, :func:`neighbours` -- RMS-G, target and realised degree maps
  and the neighbours of any pixel, exactly as the model built them;
* :func:`bit_allocation`, :func:`bit_allocation_difference` -- bits per pixel; :func:`quality_for_rate`
  -- the quality of a variable-rate model that spends a given rate (equal-rate comparisons);
* :func:`load_analysis_models`, :func:`analysis_images` -- shipped (or seeded
  untrained) models and the built-in or a folder's images;
* :mod:`gnn_lic.analysis.plot` -- matplotlib figures of the above.
"""

from gnn_lic.analysis.bits import bit_allocation, bit_allocation_difference, quality_for_rate
from gnn_lic.analysis.erf import (
    average_erf,
    center_crop,
    effective_receptive_field,
    erf_difference,
    erf_mass_area,
    stage_features,
    stage_module,
)
from gnn_lic.analysis.graphs import GraphStage, graph_blocks, graph_stages, neighbours
from gnn_lic.analysis.models import analysis_images, load_analysis_models

__all__ = [
    "effective_receptive_field",
    "average_erf",
    "erf_mass_area",
    "erf_difference",
    "center_crop",
    "stage_features",
    "stage_module",
    "GraphStage",
    "graph_blocks",
    "graph_stages",
    "neighbours",
    "bit_allocation",
    "bit_allocation_difference",
    "quality_for_rate",
    "load_analysis_models",
    "analysis_images",
]
