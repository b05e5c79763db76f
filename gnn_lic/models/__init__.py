"""Compression models (CompressAI contract) built on the graph core.

Importing this package registers every model: ``glic`` and its ablation variants
(:mod:`gnn_lic.models.glic`), ``cnn``, ``gabic`` and ``gabic-keepall`` (:mod:`gnn_lic.models.gabic`),
``wacnn`` (Zou et al.'s window-attention CNN, :mod:`gnn_lic.models.wacnn`).

The registry (:mod:`~gnn_lic.models.registry`) knows nothing of weights; checkpoints
(:mod:`~gnn_lic.models.checkpoint`) rebuild models from it, the zoo of shipped weights
(:mod:`~gnn_lic.models.zoo`) sits on checkpoints, and :func:`create_model`
(:mod:`~gnn_lic.models.factory`) on both.
"""

from gnn_lic.models.factory import create_model, list_models
from gnn_lic.models.registry import SIZES, register_model

from gnn_lic.models import gabic, glic, wacnn  # noqa: E402,F401,I001 - registers the models
from gnn_lic.models.base import PaddedCompressionModel
from gnn_lic.models.gabic import GABIC
from gnn_lic.models.glic import GLIC
from gnn_lic.models.official import convert_official, load_official
from gnn_lic.models.wacnn import WACNN

__all__ = ["create_model", "list_models", "register_model", "SIZES", "GLIC", "GABIC", "WACNN", "PaddedCompressionModel",
           "load_official", "convert_official"]
