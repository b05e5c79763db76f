"""Fixed-point scales -> indexes of the Gaussian conditional's CDF tables."""

from __future__ import annotations

import torch
from compressai.entropy_models import GaussianConditional
from torch import Tensor

from gnn_lic.models.fixed_point.arith import DTYPE, from_act

__all__ = ["scale_indexes"]


def scale_indexes(gc: GaussianConditional, scales: Tensor) -> Tensor:
    r"""``gc.build_indexes(scales * 2**-16)`` for fixed-point ``scales``, as one search.

    CompressAI's ``build_indexes`` raises the scale to its lower bound :math:`\beta`, then
    counts the table entries :math:`s_j` (:math:`j < T - 1`) with :math:`s \le s_j`, one
    comparison pass per entry; the index is :math:`T - 1` minus that count, i.e. the
    number of :math:`s_j < s`, which a binary search of the ascending table gives in one
    pass. Both compare the same float64 values exactly, so the indexes are identical. A
    table that is not strictly ascending falls back to ``build_indexes``.
    """
    table = gc.scale_table.detach().to(scales.device, DTYPE)
    s = torch.maximum(from_act(scales, DTYPE), gc.lower_bound_scale.bound.to(scales.device, DTYPE))
    if table.numel() < 2 or not bool((table[1:] > table[:-1]).all()):
        return gc.build_indexes(s)
    return torch.searchsorted(table[:-1].contiguous(), s.contiguous(), right=False).to(torch.int32)
