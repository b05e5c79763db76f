r"""(Shifted) window multi-head self-attention with a relative-position bias, and Zou et al.'s window block.

Window attention is the Swin Transformer's W-MSA / SW-MSA (Liu et al., *Swin Transformer:
Hierarchical Vision Transformer using Shifted Windows*, ICCV 2021, Sec. 3.2, eq. 4):
the ``(H, W)`` map is cut into non-overlapping ``M x M`` windows and every token attends
to the ``M^2`` tokens of its window,

.. math::
    \mathrm{Attention}(Q, K, V) = \mathrm{SoftMax}\!\left(Q K^\top / \sqrt{d} + B\right) V,

with ``B`` (one ``M^2 x M^2`` matrix per head) read from a learned table
:math:`\hat{B} \in \mathbb{R}^{(2M-1)^2 \times h}` at the relative offset
:math:`(\Delta r, \Delta c) \in [-(M-1), M-1]^2` of query and key
(:func:`relative_position_index`). With a shift ``s > 0`` the map is first rolled by
``(-s, -s)`` (the "cyclic shift" of Swin Sec. 3.2), windows are cut in the rolled
map, tokens that the roll brought together from opposite borders are kept apart by a
mask (:func:`window_mask`), and the result is rolled back.

Sizes that are not multiples of ``M``: the map is zero-padded at the bottom and right
to a multiple of ``M`` before the roll, and the padded positions are masked as keys,
so the output on the real positions does not depend on the padding (the original
Swin code lets padded zeros take part as keys; nothing here needs that).

:class:`WindowAttentionBlock` is the window block of Zou et al., *The Devil Is in the
Details: Window-based Attention for Image Compression* (CVPR 2022), the blocks of their
CNN model ("WACNN", :mod:`gnn_lic.models.wacnn`). What is followed here, and from where
(the paper's own text was not available to us; GABIC, ICIP 2024, Sec. 3.3 and eqs. 8-12
describe the same block from the outside):

* the block is :math:`\mathrm{out} = a(x) \odot \sigma(b(x)) + x`, ``a`` = three
  residual units, ``b`` = window attention, three residual units, a 1x1 convolution
  (Zou et al. Fig. 3 / GABIC Fig. 3(a); identical to GABIC's graph block with the
  graph layer swapped, the GABIC authors' graph block);
* the window attention of ``b`` in the authors' released code (STF repository,
  ``compressai/layers/win_attention.py`` and ``compressai/models/cnn.py``, read, not
  copied) is **one** Swin attention layer with its shift always on -- window 8 / shift 4
  at 1/4 resolution, window 4 / shift 2 at 1/16 -- as ``x + SW-MSA(x)``: residual,
  relative-position bias, 8 heads, qkv bias, **no LayerNorm and no MLP**. That is the
  default here (``swin_pair=False``);
* ``swin_pair=True`` instead puts a full Swin block pair in ``b``: a W-MSA layer and
  an SW-MSA layer, each ``x + MSA(LN(x))`` then ``x + MLP(LN(x))`` (Swin eq. 3). It is
  an option for comparisons, not what the authors' code runs.

Shapes use ``B`` (batch), ``C`` channels, ``M`` window, ``N = M^2`` tokens per window.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnn_lic.nn.blocks import ResidualUnit

__all__ = [
    "relative_position_index",
    "window_partition",
    "window_merge",
    "window_mask",
    "window_attention",
    "WindowAttention",
    "WindowAttentionLayer",
    "WindowAttentionBlock",
]


def relative_position_index(window: int) -> Tensor:
    r"""Index into the ``(2M-1)^2`` bias table for every (query, key) pair of a window.

    Tokens are numbered in raster order, ``t = r * M + c``. For query ``i`` at
    ``(r_i, c_i)`` and key ``j`` at ``(r_j, c_j)`` the index is
    :math:`(r_i - r_j + M - 1)(2M - 1) + (c_i - c_j + M - 1)`.

    Returns:
        int64 ``(M^2, M^2)``.

    >>> relative_position_index(2).tolist()
    [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    """
    M = int(window)
    r, c = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    dr = r[:, None] - r[None, :] + (M - 1)
    dc = c[:, None] - c[None, :] + (M - 1)
    return dr * (2 * M - 1) + dc


def window_partition(x: Tensor, window: int) -> Tensor:
    """``(B, H, W, C)`` with ``H, W`` multiples of ``M`` -> ``(B * nW, M^2, C)``, windows in raster order."""
    B, H, W, C = x.shape
    M = window
    x = x.view(B, H // M, M, W // M, M, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B * (H // M) * (W // M), M * M, C)


def window_merge(windows: Tensor, window: int, B: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, M^2, C)`` -> ``(B, H, W, C)``."""
    M = window
    C = windows.shape[-1]
    x = windows.view(B, H // M, W // M, M, M, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def _padded(n: int, window: int) -> int:
    return n + (-n) % window


def window_mask(H: int, W: int, window: int, shift: int = 0, device=None) -> Optional[Tensor]:
    r"""Which (query, key) pairs of each window may not attend, or ``None`` when all may.

    Every position of the padded ``(Hp, Wp)`` map gets a label: padded positions one
    label of their own; real positions a label saying whether the roll by ``-s``
    wrapped their row and/or their column (in the rolled map, rows
    ``[Hp - s, Hp)`` came from the top border, likewise columns). Two tokens of a
    window may attend iff their labels are equal. This is Swin's region mask (its
    3x3 regions differ only in the wrap flags inside any one window) plus padding.

    Returns:
        bool ``(nW, M^2, M^2)`` (``True`` = blocked), windows in the raster order of
        :func:`window_partition` of the rolled, padded map; ``None`` when nothing is
        blocked (no shift and no padding).
    """
    M, s = int(window), int(shift)
    Hp, Wp = _padded(H, M), _padded(W, M)
    if s == 0 and Hp == H and Wp == W:
        return None
    # label the padded map in its original frame, then roll it like the features
    row = torch.arange(Hp, device=device)
    col = torch.arange(Wp, device=device)
    # a rolled row p holds original row (p + s) mod Hp: it wrapped iff p >= Hp - s, i.e. original row < s
    wrap_r = (row < s).long() if s else torch.zeros_like(row)
    wrap_c = (col < s).long() if s else torch.zeros_like(col)
    label = wrap_r[:, None] * 2 + wrap_c[None, :]
    pad = (row[:, None] >= H) | (col[None, :] >= W)
    label = torch.where(pad, torch.full_like(label, 4), label)
    if s:
        label = torch.roll(label, shifts=(-s, -s), dims=(0, 1))
    lab = window_partition(label[None, :, :, None], M)[..., 0]  # (nW, N)
    return lab[:, :, None] != lab[:, None, :]


def window_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Optional[Tensor] = None, scale: Optional[float] = None
) -> Tensor:
    r"""Batched :math:`\mathrm{SoftMax}(s\,QK^\top + B)V` over windows.

    Args:
        q, k, v: ``(B, nW, h, N, d)``.
        bias: ``(h, N, N)`` relative-position bias.
        mask: bool ``(nW, N, N)``, ``True`` = blocked (every row must keep one key), or None.
        scale: logit scale :math:`s` (default :math:`d^{-1/2}`).

    Returns:
        ``(B, nW, h, N, d)``.
    """
    B, nW, h, N, d = q.shape
    # 4-D views (what the fused CUDA kernels take), with the additive mask broadcast over the batch
    if mask is None:
        shape, add = (B * nW, h, N, d), bias.to(q.dtype)[None]  # (1, h, N, N)
    else:
        shape = (B, nW * h, N, d)
        add = bias.to(q.dtype)[None].masked_fill(mask[:, None], float("-inf")).reshape(1, nW * h, N, N)
    out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape), attn_mask=add,
                                         scale=scale)
    return out.view(B, nW, h, N, d)


class WindowAttention(nn.Module):
    r"""Window multi-head self-attention (W-MSA, or SW-MSA with ``shift > 0``), Swin eq. 4.

    .. math::
        \mathbf{x}'_i = W_o \big\Vert_{h} \sum_{j \in \mathrm{win}(i)}
        \mathrm{softmax}_j\!\left(\frac{\mathbf{q}^h_i \cdot \mathbf{k}^h_j}{\sqrt{d}}
        + \hat{B}^h[\mathrm{idx}(i, j)] + \mathrm{mask}_{ij}\right) \mathbf{v}^h_j

    Args:
        channels (int): ``C`` (a multiple of ``heads``).
        window (int): window side ``M``.
        heads (int): ``h`` (default 8); ``d = C / h``.

    Shapes:
        input ``(B, H, W, C)`` (channels last, any ``H, W >= 1``), output the same.

    The bias table starts from a truncated normal (std 0.02), as in Swin.
    """

    def __init__(self, channels: int, window: int, heads: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be a multiple of heads ({heads})")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.channels, self.window, self.heads = channels, int(window), heads
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def bias(self) -> Tensor:
        """The ``(h, N, N)`` bias matrices read from the table."""
        N = self.window**2
        idx = self.relative_position_index.reshape(-1)
        return self.relative_position_bias_table[idx].view(N, N, self.heads).permute(2, 0, 1)

    def forward(self, x: Tensor, shift: int = 0) -> Tensor:
        B, H, W, C = x.shape
        M, h = self.window, self.heads
        if not 0 <= shift < M:
            raise ValueError(f"shift must be in [0, {M}), got {shift}")
        Hp, Wp = _padded(H, M), _padded(W, M)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        tokens = window_partition(x, M)  # (B * nW, N, C)
        nW, N = tokens.shape[0] // B, M * M
        qkv = self.qkv(tokens).view(B, nW, N, 3, h, C // h).permute(3, 0, 1, 4, 2, 5)
        mask = window_mask(H, W, M, shift, device=x.device)
        out = window_attention(qkv[0], qkv[1], qkv[2], self.bias(), mask)  # (B, nW, h, N, d)
        out = self.proj(out.permute(0, 1, 3, 2, 4).reshape(B * nW, N, C))
        out = window_merge(out, M, B, Hp, Wp)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out[:, :H, :W]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, window={self.window}, heads={self.heads}"


class WindowAttentionLayer(nn.Module):
    r"""A residual window-attention layer on ``(B, C, H, W)`` maps.

    * ``mlp_ratio=None`` (Zou et al.'s released code): :math:`x + \mathrm{(S)W\text{-}MSA}(x)`;
    * ``mlp_ratio=r`` (a Swin block, Swin eq. 3): :math:`x' = x + \mathrm{(S)W\text{-}MSA}(\mathrm{LN}(x))`,
      :math:`x' + \mathrm{MLP}(\mathrm{LN}(x'))` with a GELU MLP of width ``r * C``.

    Args:
        channels (int): ``C``.
        window (int): ``M``.
        shift (int): cyclic shift ``s`` in ``[0, M)`` (0: W-MSA).
        heads (int): attention heads (8).
        mlp_ratio (float or None): see above (None).
    """

    def __init__(self, channels: int, window: int, shift: int = 0, heads: int = 8, mlp_ratio: Optional[float] = None):
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window={window}), got {shift}")
        self.shift = int(shift)
        self.attn = WindowAttention(channels, window, heads)
        self.mlp_ratio = mlp_ratio
        if mlp_ratio is None:
            self.norm1 = self.norm2 = self.mlp = None
        else:
            hidden = int(channels * mlp_ratio)
            self.norm1, self.norm2 = nn.LayerNorm(channels), nn.LayerNorm(channels)
            self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        t = x.permute(0, 2, 3, 1)
        if self.mlp is None:
            t = t + self.attn(t, self.shift)
        else:
            t = t + self.attn(self.norm1(t), self.shift)
            t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"shift={self.shift}, mlp_ratio={self.mlp_ratio}"


class WindowAttentionBlock(nn.Module):
    r"""Window attention block of Zou et al. (CVPR 2022), the block of their CNN model.

    .. math:: \mathrm{out} = a(x) \odot \sigma(b(x)) + x

    ``a`` = three :class:`~gnn_lic.nn.ResidualUnit` s; ``b`` = window attention
    (:class:`WindowAttentionLayer`), three residual units, a 1x1 convolution. See the
    module docstring for what the attention part is and where it comes from.

    Args:
        channels (int): ``C``.
        window (int): window side ``M`` (8 at 1/4 resolution, 4 at 1/16).
        shift (int): cyclic shift (4 and 2; default ``M // 2``).
        heads (int): attention heads (8).
        swin_pair (bool): False (default, the authors' code): one SW-MSA layer
            ``x + SW-MSA(x)``; True: a Swin W-MSA + SW-MSA block pair with LayerNorms and MLPs.
        mlp_ratio (float): MLP width of the Swin pair (4, as in Swin); unused otherwise.

    Shapes:
        ``(B, C, H, W) -> (B, C, H, W)``, any ``H, W >= 1``.
    """

    def __init__(
        self,
        channels: int,
        window: int = 8,
        shift: Optional[int] = None,
        heads: int = 8,
        swin_pair: bool = False,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        shift = window // 2 if shift is None else int(shift)
        self.window, self.shift, self.swin_pair = int(window), shift, bool(swin_pair)
        if swin_pair:
            attn = [
                WindowAttentionLayer(channels, window, 0, heads, mlp_ratio),
                WindowAttentionLayer(channels, window, shift, heads, mlp_ratio),
            ]
        else:
            attn = [WindowAttentionLayer(channels, window, shift, heads)]
        self.branch_a = nn.Sequential(*(ResidualUnit(channels) for _ in range(3)))
        self.branch_b = nn.Sequential(*attn, *(ResidualUnit(channels) for _ in range(3)),
                                      nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.branch_a(x) * torch.sigmoid(self.branch_b(x)) + x

    def attention_layers(self) -> Tuple[WindowAttentionLayer, ...]:
        """The attention layers at the head of branch ``b``."""
        return tuple(m for m in self.branch_b if isinstance(m, WindowAttentionLayer))

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}, swin_pair={self.swin_pair}"
