"""GLIC's graph aggregation layer."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from numba import prange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from gnn_lic import compiled
from gnn_lic.graph.sparse import CSRGraph
from gnn_lic.nn.attention_base import SparseAttentionConv

__all__ = ["GraphAggregationConv", "UnitHeads", "position_coords"]

#: ``F.normalize``'s floor of the norm
NORM_EPS = 1e-12


@compiled.jit(parallel=True, fastmath=set(compiled.FAST_DOTS))
def _unit_heads_grad(u, n, scale, grad_q, grad_k, eps, one, out, dots):  # pragma: no cover - compiled
    # u (N, 2, H, d) unit heads x / max(|x|, eps), n (N, 2, H) the norms |x|; grad_q, grad_k (N, H, d) the gradients
    # of scale_h u (queries, part 0) and u (keys, part 1); out (N, 2, H, d) the gradient of x; dots (N, H) grad . u of
    # the queries (the gradient of their scale, summed over the nodes); eps and one of u's dtype
    N, _, H, d = u.shape
    for i in prange(N):
        for part in range(2):
            for h in range(H):
                u_h, o_h = u[i, part, h], out[i, part, h]
                g_h = grad_q[i, h] if part == 0 else grad_k[i, h]
                dot = one - one
                for t in range(d):
                    dot += u_h[t] * g_h[t]
                c = scale[h] if part == 0 else one
                if part == 0:
                    dots[i, h] = dot
                if n[i, part, h] >= eps:  # d(x/|x|) = (I - u u^T) / |x|
                    c = c / n[i, part, h]
                    for t in range(d):
                        o_h[t] = c * (g_h[t] - u_h[t] * dot)
                else:  # the floor: x / eps, no gradient through the norm (as clamp_min's)
                    c = c / eps
                    for t in range(d):
                        o_h[t] = c * g_h[t]


class UnitHeads(torch.autograd.Function):
    r"""Cosine logits' operands of :class:`GraphAggregationConv` from one projection ``qk`` ``(N, 2, H, d)``:
    :math:`(\tau_h\, q / \max(\lVert q \rVert, \epsilon),\; k / \max(\lVert k \rVert, \epsilon))`,
    ``F.normalize``'s numbers, each ``(N, H, d)`` (the keys a view of the unit heads). The backward is one
    compiled pass (:math:`\partial x = c\,(g - u\, u^\top g) / \lVert x \rVert`, :math:`c = \tau_h` or 1, and
    :math:`\partial \tau_h = \sum_i g_{q,i}^\top u_{q,i}`) instead of autograd's separate norm, division and
    product gradients."""

    @staticmethod
    def forward(ctx, qk: Tensor, tau: Tensor) -> Tuple[Tensor, Tensor]:
        n = qk.norm(2, dim=-1)
        u = qk / n.clamp_min(NORM_EPS).unsqueeze(-1)
        ctx.save_for_backward(u, n, tau)
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return u[:, 0] * tau.view(1, -1, 1), u[:, 1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: Optional[Tensor], grad_k: Optional[Tensor]):
        u, n, tau = ctx.saved_tensors
        N, _, H, d = u.shape
        queries_used = grad_q is not None
        grad_q, grad_k = (u.new_zeros(N, H, d) if g is None else g.contiguous() for g in (grad_q, grad_k))
        out, dots = torch.empty_like(u), u.new_empty(N, H)
        dtype = u.numpy().dtype.type
        compiled.parallel(_unit_heads_grad, u.numpy(), n.numpy(), tau.detach().to(u.dtype).contiguous().numpy(),
                          grad_q.numpy(), grad_k.numpy(), dtype(NORM_EPS), dtype(1), out.numpy(), dots.numpy())
        return out, dots.sum(0, dtype=torch.float64).to(tau.dtype) if queries_used else None


def unit_heads_fit(qk: Tensor) -> bool:
    """Whether :class:`UnitHeads` takes ``qk`` ``(N, 2, H, d)``: compiled loops on, a float32 or float64 CPU tensor."""
    return compiled.enabled() and qk.device.type == "cpu" and qk.dtype in (torch.float32, torch.float64)


class GraphAggregationConv(SparseAttentionConv):
    r"""Edge-conditioned softmax aggregation of GLIC (CVPR 2026), eqs. (10)-(11).

    .. math::
        z_i = W_o \big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}_i} \alpha_{i \leftarrow j}^{h}\,
        \phi^{h}(z_j), \qquad
        \alpha_{i \leftarrow j}^{h} = \frac{\exp\big(\tau_h \cos(W_q^h z_i, W_k^h z_j)\big)}
        {\sum_{u \in \mathcal{N}_i} \exp\big(\tau_h \cos(W_q^h z_i, W_k^h z_u)\big)}

    :math:`g = \cos` of projected features is eq. (11)'s similarity, scaled by a
    learnable per-head temperature :math:`\tau_h = \exp(\min(t_h, \log \tau_{max}))`
    (initialised to ``temperature``); :math:`\phi` is the learnable linear
    projection of eq. (10); :math:`W_o` mixes the heads (as in the authors' code).

    With ``position_bias=(Q, S)`` (the authors' code, not in the paper) each logit
    gains a relative-position term :math:`b^h_{ij} = 16\,\sigma(\mathrm{MLP}(c_{ij}))_h`,
    SwinV2's continuous position bias: an MLP ``2 -> 512 -> H`` maps the log-spaced
    offset :math:`c_{ij}` between a query's place in its ``Q x Q`` group and the
    candidate's slot in the ``S x S`` window (the graph's
    :attr:`~gnn_lic.graph.CSRGraph.rel_index`, see :func:`gnn_lic.graph.build_graphs`).

    Args:
        channels (int): input and output channels ``C``.
        heads (int): number of heads ``H`` (``C`` must be divisible by ``H``).
        bias (bool): biases in the projections (default ``True``).
        temperature (float): initial temperature (default ``10``).
        max_temperature (float): temperature cap (default ``100``).
        position_bias (pair of int, optional): ``(Q, S)`` of the relative-position
            table (default ``None``: no position term).
        impl (str): ``"sparse"`` (default) or ``"gather"``, see
            :class:`~gnn_lic.nn.attention_base.SparseAttentionConv`.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)`, edge indices
          :math:`(2, |\mathcal{E}|)` (or a :class:`~gnn_lic.graph.CSRGraph`)
        - **output:** node features :math:`(|\mathcal{V}|, C)`
    """

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        bias: bool = True,
        temperature: float = 10.0,
        max_temperature: float = 100.0,
        position_bias: Optional[Sequence[int]] = None,
        impl: str = "sparse",
        **kwargs,
    ):
        super().__init__(impl=impl, **kwargs)
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.channels = channels
        self.heads = heads
        self.temperature = temperature
        self.max_temperature = max_temperature
        self.qk = nn.Linear(channels, 2 * channels, bias=bias)
        self.phi = nn.Linear(channels, channels, bias=bias)
        self.out = nn.Linear(channels, channels, bias=bias)
        self.log_temperature = nn.Parameter(torch.empty(heads))
        self.position_bias = None if position_bias is None else tuple(int(v) for v in position_bias)
        if self.position_bias is not None:
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, heads, bias=False))
            self.register_buffer("position_coords", position_coords(*self.position_bias), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        for lin in (self.qk, self.phi, self.out):
            lin.reset_parameters()
        nn.init.constant_(self.log_temperature, math.log(self.temperature))
        if self.position_bias is not None:
            for layer in self.cpb_mlp:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def position_table(self) -> Tensor:
        r"""``((Q + S - 1)^2, H)`` relative-position terms, :math:`16\,\sigma(\mathrm{MLP}(c))`."""
        return 16 * torch.sigmoid(self.cpb_mlp(self.position_coords))

    def project(self, x: Tensor):
        """``(q, k, v)`` of node features ``x``: unit queries scaled by :math:`\\tau_h`, unit keys and
        values, each ``(N, H, d)``, and the logit bound of :meth:`attention`."""
        N, H = x.shape[0], self.heads
        tau = self.log_temperature.clamp(max=math.log(self.max_temperature)).exp()
        qk = self.qk(x).view(N, 2, H, -1)
        if not torch.is_grad_enabled():  # the same numbers as F.normalize, in place: no copies of q and k
            qk.div_(qk.norm(2, dim=-1, keepdim=True).clamp_min_(NORM_EPS))
            q, k = qk.unbind(1)
            q.mul_(tau.view(1, H, 1))
        elif unit_heads_fit(qk):
            q, k = UnitHeads.apply(qk, tau)
        else:
            q, k = qk.unbind(1)
            q = F.normalize(q, dim=-1, eps=NORM_EPS) * tau.view(1, H, 1)
            k = F.normalize(k, dim=-1, eps=NORM_EPS)
        return q, k, self.phi(x).view(N, H, -1), tau

    def attention(self, q: Tensor, k: Tensor, v: Tensor, tau: Tensor, edge_index: Union[Tensor, CSRGraph]) -> Tensor:
        """The heads' attention-weighted sums ``(N, C)``, before the output projection ``out``."""
        N = q.shape[0]
        if self.position_bias is None:
            # |cos| <= 1, so tau bounds the logits: no per-row maximum is needed
            return self.attend(q, k, v, edge_index, logit_bound=tau).reshape(N, -1)
        table = self.position_table()

        def edge_bias(graph: CSRGraph) -> Tensor:
            if graph.rel_index is None:
                raise ValueError("position_bias needs graphs built with positions=True (CSRGraph.rel_index)")
            return table.index_select(0, graph.rel_index)

        bound = tau + table.detach().amax(0)
        return self.attend(q, k, v, edge_index, logit_bound=bound, edge_bias=edge_bias).reshape(N, -1)

    def forward(self, x: Tensor, edge_index: Union[Tensor, CSRGraph]) -> Tensor:
        q, k, v, tau = self.project(x)
        agg = self.attention(q, k, v, tau, edge_index)
        del q, k, v  # not held while the output projection runs
        return self.out(agg)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads}, impl={self.impl!r})"


def position_coords(Q: int, S: int) -> Tensor:
    r"""``((Q + S - 1)^2, 2)`` log-spaced offsets of a SwinV2 continuous position bias.

    Offsets run over ``-(S - 1) .. Q - 1`` on each axis (row-major table, row offset
    first), scaled by :math:`8 / (Q - 1)` and mapped by
    :math:`t \mapsto \mathrm{sign}(t) \log_2(1 + |t|) / \log_2 8`.
    """
    r = torch.arange(-(S - 1), Q, dtype=torch.float32)
    t = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    t = t / max(Q - 1, 1) * 8
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)
