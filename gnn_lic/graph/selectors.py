"""Selectors: which candidates become in-neighbours (GLIC Sec. 3.3.3, GABIC eq. 7).

A selector sees the cosine similarities ``S_ij`` of every node ``i`` to its
candidates (a ``(B, R, K)`` tensor of rows in the block order of
:class:`~gnn_lic.graph.Candidates`, with a validity mask) and returns a
:class:`Selection`: either a boolean mask of the kept edges ``j -> i`` or
per-row thresholds (keep ``S_ij >= theta_i``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from gnn_lic.graph import _rowkernels
from gnn_lic.graph.scores import SCORES, complexity_score, degree_quota

__all__ = ["Selector", "Selection", "AdaptiveDegree", "TopK", "KeepAll", "bisection_threshold", "BISECTIONS"]


@dataclass
class Selection:
    """What a selector decided, for the ``(B, R, K)`` similarity rows it was given.

    Attributes:
        keep: ``(B, R, K)`` bool mask of kept edges, or ``None`` for a threshold rule.
        threshold: ``(B, R)`` per-row thresholds: keep ``S_ij >= theta_i`` among
            valid candidates (when ``keep`` is ``None``).
        degree: ``(B, R)`` resulting in-degrees, when already counted.
        masked_sim: the similarities with ``-inf`` at invalid entries, when made.
        info: node-order ``(B, N)`` maps for :class:`~gnn_lic.graph.GraphInfo`
            (``scores``, ``quota``, ``target_degree``, ``threshold``).
        strict: keep ``S_ij > theta_i`` instead of ``>=``.
    """

    keep: Optional[Tensor] = None
    threshold: Optional[Tensor] = None
    degree: Optional[Tensor] = None
    masked_sim: Optional[Tensor] = None
    info: Dict[str, Tensor] = field(default_factory=dict)
    strict: bool = False


class Selector:
    """Base class of the rules deciding *how much to connect*.

    ``select(sim, valid, x, cands=..., num_candidates=..., scores=...)`` gets the
    similarity rows ``(B, R, K)`` (block order, see
    :class:`~gnn_lic.graph.Candidates`), their validity mask (``None`` when every
    candidate is valid), the feature map, the candidates, the node-order
    candidate counts ``n_i`` ``(N,)`` and optional precomputed scores, and
    returns a :class:`Selection`.
    """

    #: whether the node itself may be its own neighbour
    self_loops: bool = True
    #: whether the rule is a per-row threshold whose rows can be decided chunk by chunk
    #: (:meth:`row_targets` and :meth:`threshold_rows`; see :func:`gnn_lic.graph.build_graphs`)
    row_wise: bool = False

    def prepare(self, x: Tensor) -> Optional[Tensor]:
        """Per-map data shared by all graphs built from ``x`` (e.g. complexity scores)."""
        return None

    def select(self, sim: Tensor, valid: Optional[Tensor], x: Tensor, *, cands, num_candidates: Tensor,
               scores: Optional[Tensor] = None) -> Selection:
        raise NotImplementedError  # pragma: no cover

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{self.__class__.__name__}({args})"


#: bisection rules: "paper" (Algorithm 1) and "official" (the authors' code)
BISECTIONS = ("paper", "official")


@torch.no_grad()
def bisection_threshold(sim: Tensor, valid: Optional[Tensor], target: Tensor, iters: int = 5,
                        rule: str = "paper") -> Tensor:
    r"""Per-node threshold search by bisection, GLIC Algorithm 1 (eqs. 8-9).

    For every row ``i``: :math:`\ell_i = \min_j S_{ij}`, :math:`u_i = \max_j S_{ij}`,
    :math:`\theta_i = \frac{1}{n_i}\sum_j S_{ij}`; then ``iters`` times:
    :math:`m_i = \#\{j : S_{ij} \ge \theta_i\}`; if :math:`m_i > d_i^*` then
    :math:`\ell_i \leftarrow \theta_i` else :math:`u_i \leftarrow \theta_i`;
    :math:`\theta_i \leftarrow (\ell_i + u_i)/2`. Minima, maxima, means and counts
    run over valid candidates only.

    The initial mean is capped at the maximum, which it can exceed only by
    floating-point rounding; so :math:`\theta_i \le u_i` always holds and every
    node with a candidate keeps at least its most similar one.

    ``rule="official"`` is the variant of the GLIC authors' code: counts and the
    final selection use the strict :math:`S_{ij} > \theta_i`, the upper bound
    starts at :math:`u_i = 1` (the largest cosine similarity) and the mean is not
    capped; a node may then keep no candidate.

    Args:
        sim (Tensor): ``(..., K)`` similarities.
        valid (Tensor or None): ``(..., K)`` bool, which entries are real
            candidates (``None``: all of them).
        target (Tensor): ``(...)`` target degrees :math:`d_i^*`.
        iters (int): number of bisection steps ``T``.
        rule (str): one of :data:`BISECTIONS`.

    Returns:
        Tensor: thresholds :math:`\theta_i` of shape ``(...)``.
    """
    if rule not in BISECTIONS:
        raise ValueError(f"rule must be one of {BISECTIONS}, got {rule!r}")
    return _bisection(sim, valid, target, iters, rule == "official")[0]


def _bisection(sim: Tensor, valid: Optional[Tensor], target: Tensor, iters: int, official: bool = False
               ) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    """:func:`bisection_threshold`, also returning the final degrees (when counted)
    and the similarities with ``-inf`` at invalid entries."""
    if valid is None:
        lo, hi = sim.amin(-1), sim.amax(-1)
        mean = sim.mean(-1)
        sim_masked = sim
    else:
        inf = torch.tensor(float("inf"), dtype=sim.dtype, device=sim.device)
        lo = torch.where(valid, sim, inf).amin(-1)
        sim_masked = torch.where(valid, sim, -inf)  # invalid entries never count
        hi = sim_masked.amax(-1)
        n = valid.sum(-1).clamp_min(1)
        mean = torch.where(valid, sim, 0).sum(-1) / n
    target = target.expand(mean.shape)
    if official:
        hi = torch.ones_like(hi)
        theta = mean
        for _ in range(iters):
            m = (sim_masked > theta.unsqueeze(-1)).sum(-1)
            over = m > target
            lo = torch.where(over, theta, lo)
            hi = torch.where(over, hi, theta)
            theta = (lo + hi) / 2
        return theta, None, sim_masked
    theta = torch.minimum(mean, hi)
    if _rowkernels.enabled(sim, target) and 0 < sim.numel() and sim.shape[-1] < 2**24:  # float counts exact
        K = sim.shape[-1]
        theta = theta.contiguous()
        degree = _rowkernels.bisect_rows(sim_masked.reshape(-1, K), theta.view(-1), lo.reshape(-1), hi.reshape(-1),
                                         target.reshape(-1), iters)
        return theta, degree.view(theta.shape), sim_masked
    # counts m_i: the comparison is written as 0/1 floats into one reused buffer and
    # summed (exact below 2^24), faster on a CPU than summing a bool tensor,
    # which converts it to int64 first
    hits = torch.empty_like(sim_masked)
    for _ in range(iters):
        m = torch.ge(sim_masked, theta.unsqueeze(-1), out=hits).sum(-1)
        over = m > target
        lo = torch.where(over, theta, lo)
        hi = torch.where(over, hi, theta)
        theta = (lo + hi) / 2
    return theta, None, sim_masked


class AdaptiveDegree(Selector):
    r"""Complexity-aware adaptive degree, GLIC Sec. 3.3.2-3.3.3.

    Scores :math:`s_i` (``score``, see :func:`gnn_lic.graph.complexity_score`) give
    quotas :math:`q_i = N\bar{d}\,s_i / \sum_k s_k` and targets
    :math:`d_i^* = \mathrm{clip}(\mathrm{round}(q_i), 1, n_i)` (eq. 6); a per-node
    threshold :math:`\theta_i` found by ``iters`` bisection steps (Algorithm 1)
    keeps :math:`\mathcal{N}_i = \{ j \in \mathcal{C}_i : S_{ij} \ge \theta_i \}`
    (eq. 9), so the realised degree is close to, not exactly, :math:`d_i^*`.

    When the candidate set defines quota groups (``BlockWindow(group_quota=True)``,
    ``GlobalGrid(groups=...)``), the sum of the weights runs over each node's group
    and the group of ``|g|`` nodes shares the budget ``|g| \bar{d}`` (the authors'
    code), instead of the whole image.

    Args:
        avg_degree (float): target average in-degree :math:`\bar{d}`.
        score (str or None): a name of :data:`~gnn_lic.graph.SCORES` (default ``"rms"``,
            RMS-G) or ``None`` (uniform: a k-NN-like graph).
        iters (int): bisection steps ``T`` (default 5).
        bisection (str): ``"paper"`` (default): eq. (6) rounds the quota and
            Algorithm 1 runs as printed; ``"official"``: the authors' code, where the
            real-valued quota clipped to ``[1, n_i]`` is the target and the search is
            :func:`bisection_threshold` with ``rule="official"``.
    """

    def __init__(self, avg_degree: float, score: Optional[str] = "rms", iters: int = 5, bisection: str = "paper"):
        if avg_degree <= 0:
            raise ValueError(f"avg_degree must be > 0, got {avg_degree}")
        if score is not None and score not in SCORES:
            raise ValueError(f"unknown score {score!r}; choose one of {sorted(SCORES)} or None")
        if iters < 0:
            raise ValueError(f"iters must be >= 0, got {iters}")
        if bisection not in BISECTIONS:
            raise ValueError(f"bisection must be one of {BISECTIONS}, got {bisection!r}")
        self.avg_degree = avg_degree
        self.score = score
        self.iters = int(iters)
        self.bisection = bisection

    def prepare(self, x: Tensor) -> Tensor:
        return complexity_score(x, self.score)

    @property
    def row_wise(self) -> bool:  # type: ignore[override]
        return self.bisection == "paper"

    def row_targets(self, x: Tensor, *, cands, num_candidates: Tensor, scores: Optional[Tensor] = None,
                    dtype=None) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Targets :math:`d_i^*` of the ``(B, R)`` similarity rows (block order; padding rows
        borrow node 0's), and the node-order ``scores``, ``quota`` and ``target_degree`` (eq. 6)."""
        B = x.shape[0]
        if scores is None:
            scores = self.prepare(x)
        scores = scores.reshape(B, -1).to(dtype or x.dtype)
        quota, target = degree_quota(scores, self.avg_degree, num_candidates, groups=cands.groups,
                                     rounding=self.bisection == "paper")  # node order
        return target[:, cands.rows.clamp_min(0)], {"scores": scores, "quota": quota, "target_degree": target}

    def threshold_rows(self, sim: Tensor, valid: Optional[Tensor], target: Tensor
                       ) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """Thresholds, degrees (when counted) and masked similarities of rows with targets ``target``
        (Algorithm 1; each row on its own, so rows may come in chunks)."""
        return _bisection(sim, valid, target, self.iters, self.bisection == "official")

    def select(self, sim, valid, x, *, cands, num_candidates, scores=None):
        target, info = self.row_targets(x, cands=cands, num_candidates=num_candidates, scores=scores, dtype=sim.dtype)
        theta, degree, masked = self.threshold_rows(sim, valid, target)
        info["threshold"] = theta[:, cands.row_of_node]
        return Selection(threshold=theta, degree=degree, masked_sim=masked, info=info,
                         strict=self.bisection == "official")


class TopK(Selector):
    r"""k nearest candidates by cosine similarity (GABIC eq. 7).

    Keeps the :math:`\min(k, n_i)` candidates with the largest :math:`S_{ij}`;
    ties are broken by candidate order. As in the GABIC paper (edges with
    :math:`i \neq j`) the node itself is not a candidate unless ``loop=True``.

    With ``skip_first=True`` (the GABIC authors' code) every candidate, the node
    itself included, is ranked and the ``k`` after the first are kept: the first is
    the node itself unless another candidate has exactly its features.

    Args:
        k (int): number of neighbours.
        loop (bool): allow the self-loop ``i -> i`` (default ``False``).
        skip_first (bool): rank ``k + 1`` candidates with the node itself and drop
            the most similar (default ``False``).
    """

    def __init__(self, k: int, loop: bool = False, skip_first: bool = False):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if loop and skip_first:
            raise ValueError("TopK: loop and skip_first exclude each other")
        self.k = int(k)
        self.loop = bool(loop)
        self.skip_first = bool(skip_first)

    @property
    def self_loops(self) -> bool:
        return self.loop or self.skip_first

    def select(self, sim, valid, x, *, cands, num_candidates, scores=None):
        K = sim.shape[-1]
        first = int(self.skip_first)
        k = min(self.k + first, K)
        if valid is not None:
            sim = torch.where(valid, sim, torch.tensor(float("-inf"), dtype=sim.dtype, device=sim.device))
        if _rowkernels.enabled(sim):
            keep = _rowkernels.top_rows(sim, k, first)
        else:  # a stable descending sort keeps candidate order among ties (deterministic)
            order = torch.sort(sim, dim=-1, descending=True, stable=True).indices[..., first:k]
            keep = torch.zeros(sim.shape, dtype=torch.bool, device=sim.device)
            keep.scatter_(-1, order, True)
        return Selection(keep=keep & valid if valid is not None else keep)


class KeepAll(Selector):
    """Keep every candidate (window attention when used with :class:`WindowPartition`).

    Args:
        loop (bool): keep the self-loop ``i -> i`` (default ``True``).
    """

    def __init__(self, loop: bool = True):
        self.loop = bool(loop)

    @property
    def self_loops(self) -> bool:
        return self.loop

    def select(self, sim, valid, x, *, cands, num_candidates, scores=None):
        if valid is None:
            return Selection(keep=torch.ones(sim.shape, dtype=torch.bool, device=sim.device))
        return Selection(keep=valid.clone())
