"""GABIC's graph attention layer."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from gnn_lic.graph.sparse import CSRGraph
from gnn_lic.nn.attention_base import SparseAttentionConv, as_csr

__all__ = ["GraphAttentionConv"]


class GraphAttentionConv(SparseAttentionConv):
    r"""Graph attention of GABIC (ICIP 2024), eqs. (5)-(6).

    .. math::
        x'_i = x_i + W_z \big\Vert_{h=1}^{H} \sum_{j \in \mathcal{N}(i)} \alpha_{ij}^h W_g^h x_j,
        \qquad
        \alpha_{ij}^h = \mathrm{softmax}_{j \in \mathcal{N}(i)}
        \big( s\, (W_\theta^h x_i)^\top (W_\phi^h x_j) \big)

    With every window node as a neighbour this is window self-attention (GABIC
    eqs. 8-12). Eq. (6) has no scale; ``scale`` defaults to :math:`d^{-1/2}` as in
    the authors' code and in window attention (pass ``scale=1.0`` for eq. 6 as printed).

    Args:
        channels (int): input and output channels ``C``.
        heads (int): number of heads ``H`` (``C`` must be divisible by ``H``).
        bias (bool): biases in the projections (default ``True``).
        scale (float, optional): logit scale ``s`` (default :math:`(C/H)^{-1/2}`).
        edge_dim (int, optional): width of edge attributes :math:`e_{ij}`; when
            given (the authors' ``use_edge_attr``, not in the paper), each head's
            logit gains :math:`\sum_{c \in h} (W_e e_{ij})_c` with a bias-free
            ``W_e: edge_dim -> C`` (default ``None``).
        impl (str): ``"sparse"`` (default) or ``"gather"``.

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)`, edge indices
          :math:`(2, |\mathcal{E}|)` (or a :class:`~gnn_lic.graph.CSRGraph`)
        - **output:** node features :math:`(|\mathcal{V}|, C)`
    """

    def __init__(self, channels: int, heads: int = 8, bias: bool = True, scale: Optional[float] = None,
                 edge_dim: Optional[int] = None, impl: str = "sparse", **kwargs):
        super().__init__(impl=impl, **kwargs)
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.channels = channels
        self.heads = heads
        self.scale = (channels // heads) ** -0.5 if scale is None else float(scale)
        self.theta_phi_g = nn.Linear(channels, 3 * channels, bias=bias)  # W_theta, W_phi, W_g
        self.w_z = nn.Linear(channels, channels, bias=bias)
        self.edge_dim = edge_dim
        self.w_e = None if edge_dim is None else nn.Linear(edge_dim, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.theta_phi_g.reset_parameters()
        self.w_z.reset_parameters()
        if self.w_e is not None:
            self.w_e.reset_parameters()

    def forward(self, x: Tensor, edge_index: Union[Tensor, CSRGraph], edge_attr: Optional[Tensor] = None) -> Tensor:
        """``edge_attr``: ``(E, edge_dim)`` attributes in the CSR order of ``edge_index``
        (a :class:`~gnn_lic.graph.CSRGraph` without a node order)."""
        N, H = x.shape[0], self.heads
        q, k, v = self.theta_phi_g(x).view(N, 3, H, -1).unbind(1)
        edge_bias = None
        if (edge_attr is None) != (self.w_e is None):
            raise ValueError("edge_attr must be given exactly when the layer has edge_dim")
        if edge_attr is not None:
            graph = as_csr(edge_index, N)
            if graph.order is not None or edge_attr.shape[0] != graph.num_edges:
                raise ValueError("edge_attr needs one row per edge of a graph without a node order")
            per_head = self.w_e(edge_attr).view(-1, H, self.channels // H).sum(-1)  # (E, H)
            edge_index, edge_bias = graph, (lambda g: per_head)
        y = self.attend(q * self.scale, k, v, edge_index, edge_bias=edge_bias)
        return x + self.w_z(y.reshape(N, -1))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, heads={self.heads}, impl={self.impl!r})"
