r"""Latent codecs (entropy models) of GLIC and GABIC.

Both follow CompressAI's latent-codec contract, so a model only wires
``g_a -> codec -> g_s`` (see :class:`gnn_lic.models.base.PaddedCompressionModel`):
``forward(y) -> {"likelihoods": {"y", "z"}, "y_hat"}``,
``compress(y) -> {"strings", "shape", "y_hat"}``, ``decompress(strings, shape) -> {"y_hat"}``.

* :func:`scctx_latent_codec` (GLIC Sec. 4.1.3, "SCCTX" of ELIC [27], as in the authors' released model):
  composed from CompressAI's latent codecs, uneven channel groups, each group
  coded in two checkerboard passes.

  .. code-block:: none

                 ┌─────┐  z  ┌────┐ z_hat ┌─────┐
        y ──┬─►──┤ h_a ├──►──┤ EB ├───►───┤ h_s ├──►── side params ───────────────┐
            │    └─────┘     └────┘       └─────┘                                  │
            │  groups y0 | y1 | ... | yK      y_hat_{<k} ─► channel ctx_k ─────────┤
            │                                  anchors   ─► checkerboard ctx ──────┤
            └─►── y_k ──► GC( scales, means = param-agg_k[spatial, channel, side] )┘

* :class:`ChannelSliceLatentCodec` (GABIC Sec. 3.2, eq. 3; Minnen & Singh 2020
  with the support/LRP details of the GABIC authors' model): equal slices, each conditioned on
  separate mean/scale hyper-synthesis outputs and on the **first**
  ``max_support_slices`` decoded slices, with latent residual prediction
  :math:`\bar y_i = \hat y_i + \tfrac12 \tanh(r_i)`. All slices of one image
  go into a single rANS string.

Both codecs compute the entropy parameters of ``compress``/``decompress`` in fixed point
(:mod:`gnn_lic.models.fixed_point`) by default, so the decoded latents are bit-identical
on every machine; ``forward`` (training, likelihoods) stays float and differentiable.
:func:`entropy_arithmetic` switches a model back to the float path (the one of format-1
streams).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d
from compressai.ops import quantize_ste
from torch import Tensor, nn

from gnn_lic.models.fixed_point import ACT_FRAC_BITS, ACT_LIMIT, ACT_MAX, FixedTable, from_act, scale_indexes, tanh_table, to_act, to_fixed
from gnn_lic.models.layers import (
    GatedTransformCNN,
    ParameterAggregationBlock,
    channel_ramp,
    conv3x3,
    conv_stack,
    ramp_widths,
    subpel_conv3x3,
)

__all__ = [
    "ARITHMETICS",
    "entropy_arithmetic",
    "supports_fixed_point",
    "SCCTXLatentCodec",
    "ELIC_GROUPS",
    "elic_groups",
    "checkerboard_context",
    "scctx_latent_codec",
    "glic_hyper_transforms",
    "ChannelSliceLatentCodec",
]

#: ELIC's uneven channel groups for M = 320 (the GLIC authors' model keeps them)
ELIC_GROUPS = (16, 16, 32, 64, 192)


#: ``"fixed"``: deterministic fixed-point entropy parameters (default); ``"float"``: the
#: float networks (format-1 streams; not portable across machines or thread counts)
ARITHMETICS = ("fixed", "float")


class _FixedNets:
    """Fixed-point twins of some float modules, rebuilt when any of their parameters changes."""

    def __init__(self):
        self.key = None
        self.nets: Dict[str, Any] = {}

    def get(self, modules: Dict[str, nn.Module], device: torch.device) -> Dict[str, Any]:
        params = [p for m in modules.values() for p in m.parameters()]
        key = (str(device), tuple((p.data_ptr(), p._version, p.dtype) for p in params))
        if key != self.key:
            self.nets = {k: to_fixed(m, k).to(device) for k, m in modules.items()}
            self.key = key
        return self.nets


def _check_arithmetic(mode: str) -> str:
    if mode not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {mode!r}")
    return mode


class entropy_arithmetic:  # noqa: N801 - used like a function: ``with entropy_arithmetic(net, "float"):``
    """Context manager: code ``net``'s latents with ``mode`` (``"fixed"`` or ``"float"``).

    Applies to every :class:`SCCTXLatentCodec` and :class:`ChannelSliceLatentCodec` in
    ``net``; the previous modes are restored on exit.
    """

    def __init__(self, net: nn.Module, mode: str):
        self.mode = _check_arithmetic(mode)
        self.codecs = [m for m in net.modules() if isinstance(m, (SCCTXLatentCodec, ChannelSliceLatentCodec))]
        self.saved: List[str] = []

    def __enter__(self) -> "entropy_arithmetic":
        self.saved = [c.arithmetic for c in self.codecs]
        for c in self.codecs:
            c.arithmetic = self.mode
        return self

    def __exit__(self, *exc) -> None:
        for c, mode in zip(self.codecs, self.saved):
            c.arithmetic = mode


def supports_fixed_point(net: nn.Module) -> bool:
    """Whether ``net``'s latent codec has the deterministic fixed-point path."""
    return isinstance(getattr(net, "latent_codec", None), (SCCTXLatentCodec, ChannelSliceLatentCodec))


def _symbols(y: Tensor, mu: Tensor) -> Tensor:
    """``round(y - mu)`` (``mu`` a fixed-point activation), bounded to the activation range."""
    q = torch.round(y.to(torch.float64) - from_act(mu, torch.float64))
    return torch.nan_to_num(q, nan=0.0).clamp_(-ACT_LIMIT, ACT_LIMIT)


def _z_act(eb: EntropyBottleneck, z_hat: Tensor) -> Tensor:
    """Fixed-point ``z_hat``: its integer symbols plus the medians on the grid.

    ``z_hat = symbols + medians`` was summed in the model's dtype; recovering the symbols
    (exact, they are integers) and adding the medians in fixed point makes the result the
    same for float32 and float64 models.
    """
    medians = eb._get_medians().detach().reshape(1, -1, 1, 1).to(z_hat.device)
    sym = torch.round(z_hat.to(torch.float64) - medians.to(torch.float64))
    return _dequantize(sym, to_act(medians))


def _dequantize(q: Tensor, mu: Tensor) -> Tensor:
    """Fixed-point ``q + mu`` (exact), clamped to the activation range."""
    return (q * float(2**ACT_FRAC_BITS) + mu).clamp_(-ACT_MAX, ACT_MAX)


class _RansCoder:
    """One rANS string per image: encodes (``strings=None``) or decodes, symbol block by block."""

    #: measurement only: encode every block into a string of its own (as CompressAI's
    #: codecs do), to compare rates at equal string structure; such strings do not decode
    split_blocks = False

    def __init__(self, batch: int, strings: Optional[Sequence[bytes]] = None):
        self.decoding = strings is not None
        self.tables: Dict[int, Tuple[List[List[int]], List[int], List[int]]] = {}
        if self.decoding:
            if len(strings) != batch:
                raise ValueError(f"{len(strings)} y strings for a batch of {batch}")
            self.coders = []
            for s in strings:
                if not isinstance(s, (bytes, bytearray)):
                    raise ValueError("y strings must be bytes")
                dec = RansDecoder()
                dec.set_stream(bytes(s))
                self.coders.append(dec)
        else:
            self.coders = [BufferedRansEncoder() for _ in range(batch)]

    def code(self, gc: GaussianConditional, indexes: Tensor, symbols: Optional[Tensor]) -> Tensor:
        """Encode ``symbols`` or decode symbols for ``indexes`` ``(B, ...)``; returns them as float64."""
        if id(gc) not in self.tables:
            self.tables[id(gc)] = (
                gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(), gc.offset.reshape(-1).int().tolist()
            )
        cdf, lengths, offsets = self.tables[id(gc)]
        if not self.decoding:
            if self.split_blocks and getattr(self, "used", False):
                self.done = getattr(self, "done", []) + [enc.flush() for enc in self.coders]
                self.coders = [BufferedRansEncoder() for _ in self.coders]
            self.used = True
            for b, enc in enumerate(self.coders):
                enc.encode_with_indexes(
                    symbols[b].reshape(-1).int().tolist(), indexes[b].reshape(-1).tolist(), cdf, lengths, offsets
                )
            return symbols
        rows = [
            torch.tensor(dec.decode_stream(indexes[b].reshape(-1).tolist(), cdf, lengths, offsets), dtype=torch.float64)
            for b, dec in enumerate(self.coders)
        ]
        return torch.stack(rows).reshape(indexes.shape).to(indexes.device)

    def flush(self) -> List[bytes]:
        if self.split_blocks:  # all blocks of all images, for their byte count only
            return [b"".join(getattr(self, "done", []) + [enc.flush() for enc in self.coders])]
        return [enc.flush() for enc in self.coders]


def elic_groups(M: int, num_groups: int = 5) -> List[int]:
    """ELIC-style uneven groups for ``M`` channels: doubling sizes, the rest in the last.

    The first ``num_groups - 1`` groups are ``g, g, 2g, 4g, ...`` with ``g = M / 20``
    (16 for ``M = 320``) rounded down to at least 1.

    >>> elic_groups(320)
    [16, 16, 32, 64, 192]
    >>> elic_groups(32)
    [1, 1, 2, 4, 24]
    >>> elic_groups(128, 4)
    [6, 6, 12, 104]
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    g = max(M // 20, 1)
    head = [g] + [g * 2**i for i in range(num_groups - 2)] if num_groups > 1 else []
    if sum(head) >= M:
        raise ValueError(f"cannot split {M} channels into {num_groups} ELIC groups")
    return head + [M - sum(head)]


def glic_hyper_transforms(
    M: int, hyper_channels: int, side_channels: int, depth: int = 2, expansion: float = 2
) -> Tuple[nn.Sequential, nn.Sequential]:
    """GLIC's ``h_a`` (``M -> hyper``, /4) and ``h_s`` (``hyper -> side``, x4), as in the authors' released model.

    Each resolution step is followed by ``depth`` :class:`GatedTransformCNN` blocks
    (expansion 2): ``h_a`` = conv s1, blocks, conv s2, blocks, conv s2;
    ``h_s`` = subpel x2, blocks, subpel x2, blocks, conv s1.
    """

    def blocks():
        return [GatedTransformCNN(hyper_channels, expansion=expansion) for _ in range(depth)]

    h_a = nn.Sequential(
        conv3x3(M, hyper_channels),
        *blocks(),
        conv3x3(hyper_channels, hyper_channels, stride=2),
        *blocks(),
        conv3x3(hyper_channels, hyper_channels, stride=2),
    )
    h_s = nn.Sequential(
        subpel_conv3x3(hyper_channels, hyper_channels, 2),
        *blocks(),
        subpel_conv3x3(hyper_channels, hyper_channels, 2),
        *blocks(),
        conv3x3(hyper_channels, side_channels),
    )
    return h_a, h_s


def checkerboard_context(in_ch: int, out_ch: int, kernel_size: int = 5) -> CheckerboardMaskedConv2d:
    """Checkerboard-masked spatial context convolution, with its weight masked from the start.

    CompressAI's masked convolutions multiply their weight by the mask in place on
    every call; masking once at construction makes that a no-op, so the state dict
    (and a model fingerprint) does not change on the first forward or compress.
    """
    conv = CheckerboardMaskedConv2d(in_ch, out_ch, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
    with torch.no_grad():
        conv.weight.mul_(conv.mask)
    return conv


class SCCTXLatentCodec(HyperpriorLatentCodec):
    r"""CompressAI's hyperprior codec over channel groups of checkerboard codecs, coded deterministically.

    ``forward`` is CompressAI's (float, differentiable). With ``arithmetic = "fixed"``
    (default) ``compress``/``decompress`` evaluate ``h_s``, every channel context,
    checkerboard context and parameter network in fixed point
    (:mod:`gnn_lic.models.fixed_point`), in the same order as CompressAI's codecs: for
    group :math:`k`, anchors (spatial context 0) then non-anchors (spatial context from the
    decoded anchors), with :math:`\hat y_k = q + \mu` on the fixed-point grid. Every
    symbol of one image goes into a single rANS string: ``strings = [[y string per
    image], z_strings]``, ``shape = (h_z, w_z)`` (the latent is ``4 h_z x 4 w_z``).
    With ``arithmetic = "float"`` the CompressAI paths run unchanged (format-1 streams).
    """

    arithmetic: str = "fixed"

    def _modules_for_fixed(self) -> Dict[str, nn.Module]:
        hyper, ycodec = self.latent_codec["hyper"], self.latent_codec["y"]
        modules: Dict[str, nn.Module] = {"h_s": hyper.h_s}
        for k in range(len(ycodec.groups)):
            cb = ycodec.latent_codec[f"y{k}"]
            gcl = cb.latent_codec["y"]
            if not isinstance(gcl.entropy_parameters, nn.Identity) or gcl.chunks != ("scales", "means"):
                raise TypeError("fixed-point SCCTX needs GaussianConditionalLatentCodec(chunks=('scales', 'means'))")
            modules[f"ep{k}"] = cb.entropy_parameters
            modules[f"sp{k}"] = cb.context_prediction
            if k > 0:
                modules[f"cc{k}"] = ycodec.channel_context[f"y{k}"]
        return modules

    def _fixed_nets(self, device: torch.device) -> Dict[str, Any]:
        cache = self.__dict__.setdefault("_fixed_cache", _FixedNets())
        return cache.get(self._modules_for_fixed(), device)

    def compress(self, y: Tensor) -> Dict[str, Any]:
        if _check_arithmetic(self.arithmetic) == "float":
            return super().compress(y)
        eb = self.latent_codec["hyper"].entropy_bottleneck
        z = self.latent_codec["hyper"].h_a(y)
        z_strings = eb.compress(z)
        z_hat = eb.decompress(z_strings, z.shape[-2:])
        y_hat, y_strings = self._code(z_hat, y=y)
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:]), "y_hat": y_hat}

    def decompress(self, strings: List[List[bytes]], shape: Any, **kwargs) -> Dict[str, Any]:
        if _check_arithmetic(self.arithmetic) == "float":
            return super().decompress(strings, shape, **kwargs)
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("fixed-point SCCTX strings must be [y_strings, z_strings]")
        y_strings, z_strings = strings
        if not isinstance(z_strings, (list, tuple)) or len(y_strings) != len(z_strings):
            raise ValueError(f"{len(y_strings)} y strings for {len(z_strings)} z strings")
        z_hat = self.latent_codec["hyper"].entropy_bottleneck.decompress(list(z_strings), tuple(shape))
        y_hat, _ = self._code(z_hat, strings=y_strings)
        return {"y_hat": y_hat}

    def _code(self, z_hat: Tensor, y: Optional[Tensor] = None, strings: Optional[Sequence[bytes]] = None):
        """Encode ``y`` (``strings=None``) or decode ``strings``; returns ``(y_hat, y_strings)``."""
        ycodec = self.latent_codec["y"]
        nets = self._fixed_nets(z_hat.device)
        side = nets["h_s"](_z_act(self.latent_codec["hyper"].entropy_bottleneck, z_hat))
        B, _, H, W = side.shape
        groups = list(ycodec.groups)
        y_hat = side.new_zeros((B, sum(groups), H, W))
        coder = _RansCoder(B, strings)
        ij = torch.arange(H, device=side.device).reshape(-1, 1) + torch.arange(W, device=side.device)
        start = 0
        for k, g in enumerate(groups):
            cb = ycodec.latent_codec[f"y{k}"]
            gc = cb.latent_codec["y"].gaussian_conditional
            anchor = (ij % 2 == 0) if cb.anchor_parity == "even" else (ij % 2 == 1)
            channel_ctx = [nets[f"cc{k}"](y_hat[:, :start])] if k > 0 else []
            y_hat_k = y_hat[:, start : start + g]
            for step, mask in enumerate((anchor, ~anchor)):
                if step == 0:
                    spatial = side.new_zeros((B, 2 * g, H, W))
                else:
                    spatial = nets[f"sp{k}"](y_hat_k)  # non-anchors are still 0 here
                # the parameter network is pointwise: run it on the positions being coded only
                ctx = torch.cat([spatial, *channel_ctx, side], dim=1)[:, :, mask].unsqueeze(-1)
                scales, means = nets[f"ep{k}"](ctx).squeeze(-1).chunk(2, dim=1)
                indexes = scale_indexes(gc, scales)
                sym = None if y is None else _symbols(y[:, start : start + g][:, :, mask], means)
                sym = coder.code(gc, indexes, sym)
                y_hat_k[:, :, mask] = _dequantize(sym, means)
            start += g
        return from_act(y_hat, z_hat.dtype), (None if coder.decoding else coder.flush())


def scctx_latent_codec(
    M: int = 320,
    groups: Sequence[int] = ELIC_GROUPS,
    hyper_channels: int = 192,
    side_channels: int = 384,
    hyper_depth: int = 2,
    ctx_min_channels: int = 192,
    param_min_channels: int = 384,
    ctx_layers: int = 3,
    param_layers: int = 3,
) -> "SCCTXLatentCodec":
    r"""Space-channel context model (SCCTX/ELIC) as used by GLIC, from CompressAI latent codecs.

    Args:
        M (int): latent channels (``sum(groups)``).
        groups (sequence of int): channel group sizes :math:`g_0, \dots, g_K`.
        hyper_channels (int): channels of ``z`` and of the hyper transforms (192).
        side_channels (int): channels of the hyper-synthesis output (384).
        hyper_depth (int): :class:`GatedTransformCNN` blocks per hyper stage (2).
        ctx_min_channels (int): minimum hidden width of the channel-context ramps (192).
        param_min_channels (int): minimum hidden width of the parameter ramps (384).
        ctx_layers, param_layers (int): layers per ramp (3).

    For group :math:`k` the channel context maps :math:`\hat y_{<k}` to
    :math:`2g_k` channels (ramp of :class:`GatedTransformCNN`), the checkerboard
    context is a 5x5 masked convolution :math:`g_k \to 2g_k`, and the pointwise
    parameter network (ramp of :class:`ParameterAggregationBlock`) maps
    ``[spatial ctx, channel ctx, side params]`` to ``(scales, means)``.
    """
    groups = [int(g) for g in groups]
    if sum(groups) != M or min(groups) < 1:
        raise ValueError(f"groups {groups} must be positive and sum to M={M}")
    h_a, h_s = glic_hyper_transforms(M, hyper_channels, side_channels, hyper_depth)
    channel_context = {
        f"y{k}": channel_ramp(
            sum(groups[:k]),
            2 * groups[k],
            min_ch=ctx_min_channels,
            num_layers=ctx_layers,
            make_layer=GatedTransformCNN,
        )
        for k in range(1, len(groups))
    }
    group_codecs = {
        f"y{k}": CheckerboardLatentCodec(
            latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
            entropy_parameters=channel_ramp(
                2 * g + (2 * g if k > 0 else 0) + side_channels,
                2 * g,
                min_ch=param_min_channels,
                num_layers=param_layers,
                make_layer=ParameterAggregationBlock,
            ),
            context_prediction=checkerboard_context(g, 2 * g),
            forward_method="twopass",
        )
        for k, g in enumerate(groups)
    }
    return SCCTXLatentCodec(
        latent_codec={
            "hyper": HyperLatentCodec(EntropyBottleneck(hyper_channels), h_a, h_s, quantizer="ste"),
            "y": ChannelGroupsLatentCodec(group_codecs, channel_context, groups=groups),
        }
    )


class ChannelSliceLatentCodec(nn.Module):
    r"""Channel-wise autoregressive entropy model with LRP (GABIC eq. 3, and the authors' released model).

    .. math::
        z = h_a(y),\ \hat z = Q(z),\ (\mathcal D_\mu, \mathcal D_\sigma) = (h_{s,\mu}(\hat z), h_{s,\sigma}(\hat z)) \\
        \mu_i = f_{\mu,i}(\mathcal D_\mu, \bar y_{<S}),\ \sigma_i = f_{\sigma,i}(\mathcal D_\sigma, \bar y_{<S}),\
        \hat y_i = Q(y_i - \mu_i) + \mu_i,\ \bar y_i = \hat y_i + \tfrac12\tanh r_i(\mathcal D_\mu, \bar y_{<S}, \hat y_i)

    where :math:`\bar y_{<S}` are the first ``min(i, S)`` decoded slices
    (``S = max_support_slices``; ``-1`` for all previous slices).

    Args:
        M (int): latent channels (divisible by ``num_slices``).
        N (int): hyper-latent channels.
        num_slices (int): number of equal slices (10 in GABIC).
        max_support_slices (int): ``S`` (5 in GABIC).
        cc_hidden (sequence of int): hidden widths of the slice networks (224, 176, 128, 64).
        hyper_widths (sequence of int or None): widths of the hyper transforms from
            ``N`` to ``M`` (default: 5 evenly spaced values, 192..320 for GABIC).

    ``compress`` returns ``strings = [[y_string per image], z_strings]`` and
    ``shape = (h_z, w_z)``. With ``arithmetic = "fixed"`` (default) the hyper-synthesis,
    slice networks, LRP and tanh of ``compress``/``decompress`` run in fixed point
    (:mod:`gnn_lic.models.fixed_point`), so the decoded latents are bit-identical on every
    machine; ``"float"`` runs the float networks (format-1 streams).
    """

    def __init__(
        self,
        M: int = 320,
        N: int = 192,
        num_slices: int = 10,
        max_support_slices: int = 5,
        cc_hidden: Sequence[int] = (224, 176, 128, 64),
        hyper_widths: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if M % num_slices:
            raise ValueError(f"M={M} is not divisible by num_slices={num_slices}")
        self.M, self.N = M, N
        self.num_slices = num_slices
        self.slice_channels = M // num_slices
        self.max_support_slices = max_support_slices
        w = list(hyper_widths) if hyper_widths is not None else ramp_widths(N, M, 4)
        if len(w) != 5 or w[0] != N or w[-1] != M:
            raise ValueError(f"hyper_widths must be 5 widths from N={N} to M={M}, got {w}")
        self.h_a = nn.Sequential(
            conv3x3(M, M), nn.GELU(),
            conv3x3(M, w[3]), nn.GELU(),
            conv3x3(w[3], w[2], stride=2), nn.GELU(),
            conv3x3(w[2], w[1]), nn.GELU(),
            conv3x3(w[1], N, stride=2),
        )  # fmt: skip
        self.h_mean_s = self._hyper_synthesis(w)
        self.h_scale_s = self._hyper_synthesis(w)
        sc = self.slice_channels
        self.cc_mean_transforms = nn.ModuleList(
            conv_stack([M + sc * self._num_support(i), *cc_hidden, sc]) for i in range(num_slices)
        )
        self.cc_scale_transforms = nn.ModuleList(
            conv_stack([M + sc * self._num_support(i), *cc_hidden, sc]) for i in range(num_slices)
        )
        self.lrp_transforms = nn.ModuleList(
            conv_stack([M + sc * (self._num_support(i) + 1), *cc_hidden, sc]) for i in range(num_slices)
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)

    @staticmethod
    def _hyper_synthesis(w: Sequence[int]) -> nn.Sequential:
        return nn.Sequential(
            conv3x3(w[0], w[0]), nn.GELU(),
            subpel_conv3x3(w[0], w[1], 2), nn.GELU(),
            conv3x3(w[1], w[2]), nn.GELU(),
            subpel_conv3x3(w[2], w[3], 2), nn.GELU(),
            conv3x3(w[3], w[4]),
        )  # fmt: skip

    def _num_support(self, i: int) -> int:
        return i if self.max_support_slices < 0 else min(i, self.max_support_slices)

    def _slice_params(self, i: int, means: Tensor, scales: Tensor, decoded: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(mu_i, sigma_i, mean_support)`` of slice ``i`` from the decoded slices."""
        support = decoded[: self._num_support(i)]
        mean_support = torch.cat([means, *support], dim=1)
        scale_support = torch.cat([scales, *support], dim=1)
        mu = self.cc_mean_transforms[i](mean_support)
        sigma = self.cc_scale_transforms[i](scale_support)
        return mu, sigma, mean_support

    def _refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        lrp = self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(lrp)

    def _hyper(self, z_hat: Tensor, y_size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        means = self.h_mean_s(z_hat)[..., : y_size[0], : y_size[1]]
        scales = self.h_scale_s(z_hat)[..., : y_size[0], : y_size[1]]
        return means, scales

    def forward(self, y: Tensor) -> Dict[str, Any]:
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        medians = self.entropy_bottleneck._get_medians()
        z_hat = quantize_ste(z - medians) + medians
        means, scales = self._hyper(z_hat, y.shape[-2:])
        decoded: List[Tensor] = []
        likelihoods: List[Tensor] = []
        for i, y_slice in enumerate(y.split(self.slice_channels, dim=1)):
            mu, sigma, mean_support = self._slice_params(i, means, scales, decoded)
            _, lik = self.gaussian_conditional(y_slice, sigma, means=mu)
            likelihoods.append(lik)
            y_hat_slice = quantize_ste(y_slice - mu) + mu
            decoded.append(self._refine(i, mean_support, y_hat_slice))
        return {
            "likelihoods": {"y": torch.cat(likelihoods, dim=1), "z": z_likelihoods},
            "y_hat": torch.cat(decoded, dim=1),
        }

    arithmetic: str = "fixed"

    def _cdf_tables(self) -> Tuple[List[List[int]], List[int], List[int]]:
        gc = self.gaussian_conditional
        return gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(), gc.offset.reshape(-1).int().tolist()

    def _fixed_nets(self, device: torch.device) -> Dict[str, Any]:
        modules: Dict[str, nn.Module] = {"h_mean_s": self.h_mean_s, "h_scale_s": self.h_scale_s}
        for i in range(self.num_slices):
            modules[f"cc_mean{i}"] = self.cc_mean_transforms[i]
            modules[f"cc_scale{i}"] = self.cc_scale_transforms[i]
            modules[f"lrp{i}"] = self.lrp_transforms[i]
        cache = self.__dict__.setdefault("_fixed_cache", _FixedNets())
        nets = cache.get(modules, device)
        if "tanh" not in nets:
            nets["tanh"] = FixedTable(tanh_table(), "tanh").to(device)
        return nets

    def _code_fixed(self, z_hat: Tensor, y_size: Tuple[int, int], y: Optional[Tensor], strings=None):
        """Fixed-point slices (eq. 3 with LRP); encodes ``y`` or decodes ``strings``."""
        nets = self._fixed_nets(z_hat.device)
        zq = _z_act(self.entropy_bottleneck, z_hat)
        means = nets["h_mean_s"](zq)[..., : y_size[0], : y_size[1]]
        scales = nets["h_scale_s"](zq)[..., : y_size[0], : y_size[1]]
        coder = _RansCoder(z_hat.shape[0], strings)
        y_slices = y.split(self.slice_channels, dim=1) if y is not None else [None] * self.num_slices
        decoded: List[Tensor] = []
        for i, y_slice in enumerate(y_slices):
            support = decoded[: self._num_support(i)]
            mean_support = torch.cat([means, *support], dim=1)
            mu = nets[f"cc_mean{i}"](mean_support)
            sigma = nets[f"cc_scale{i}"](torch.cat([scales, *support], dim=1))
            indexes = scale_indexes(self.gaussian_conditional, sigma)
            sym = None if y_slice is None else _symbols(y_slice, mu)
            y_hat_slice = _dequantize(coder.code(self.gaussian_conditional, indexes, sym), mu)
            lrp = nets[f"lrp{i}"](torch.cat([mean_support, y_hat_slice], dim=1))
            refined = y_hat_slice + torch.round(nets["tanh"](lrp) * 0.5)
            decoded.append(refined.clamp_(-ACT_MAX, ACT_MAX))
        y_hat = from_act(torch.cat(decoded, dim=1), z_hat.dtype)
        return y_hat, (None if coder.decoding else coder.flush())

    def compress(self, y: Tensor) -> Dict[str, Any]:
        z = self.h_a(y)
        z_size = z.shape[-2:]
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z_size)
        if _check_arithmetic(self.arithmetic) == "fixed":
            y_hat, y_strings = self._code_fixed(z_hat, y.shape[-2:], y)
            return {"strings": [y_strings, z_strings], "shape": tuple(z_size), "y_hat": y_hat}
        means, scales = self._hyper(z_hat, y.shape[-2:])
        cdf, cdf_lengths, offsets = self._cdf_tables()
        B = y.shape[0]
        symbols: List[List[int]] = [[] for _ in range(B)]
        indexes: List[List[int]] = [[] for _ in range(B)]
        decoded: List[Tensor] = []
        for i, y_slice in enumerate(y.split(self.slice_channels, dim=1)):
            mu, sigma, mean_support = self._slice_params(i, means, scales, decoded)
            idx = self.gaussian_conditional.build_indexes(sigma)
            y_q = self.gaussian_conditional.quantize(y_slice, "symbols", mu)
            for b in range(B):
                symbols[b].extend(y_q[b].reshape(-1).tolist())
                indexes[b].extend(idx[b].reshape(-1).tolist())
            y_hat_slice = self.gaussian_conditional.dequantize(y_q, mu)
            decoded.append(self._refine(i, mean_support, y_hat_slice))
        y_strings = []
        for b in range(B):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols[b], indexes[b], cdf, cdf_lengths, offsets)
            y_strings.append(encoder.flush())
        return {"strings": [y_strings, z_strings], "shape": tuple(z_size), "y_hat": torch.cat(decoded, dim=1)}

    def decompress(self, strings: List[List[bytes]], shape: Sequence[int], **kwargs) -> Dict[str, Any]:
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("channel-slice strings must be [y_strings, z_strings]")
        y_strings, z_strings = strings
        if not isinstance(z_strings, (list, tuple)) or len(y_strings) != len(z_strings):
            raise ValueError(f"{len(y_strings)} y strings for {len(z_strings)} z strings")
        z_hat = self.entropy_bottleneck.decompress(list(z_strings), tuple(shape))
        y_size = (4 * z_hat.shape[-2], 4 * z_hat.shape[-1])
        if _check_arithmetic(self.arithmetic) == "fixed":
            return {"y_hat": self._code_fixed(z_hat, y_size, None, y_strings)[0]}
        means, scales = self._hyper(z_hat, y_size)
        cdf, cdf_lengths, offsets = self._cdf_tables()
        decoders = []
        for s in y_strings:
            dec = RansDecoder()
            dec.set_stream(s)
            decoders.append(dec)
        decoded: List[Tensor] = []
        for i in range(self.num_slices):
            mu, sigma, mean_support = self._slice_params(i, means, scales, decoded)
            idx = self.gaussian_conditional.build_indexes(sigma)
            rv = [
                torch.tensor(dec.decode_stream(idx[b].reshape(-1).tolist(), cdf, cdf_lengths, offsets))
                for b, dec in enumerate(decoders)
            ]
            y_q = torch.stack(rv).reshape(mu.shape).to(mu.device)
            y_hat_slice = self.gaussian_conditional.dequantize(y_q, mu)
            decoded.append(self._refine(i, mean_support, y_hat_slice))
        return {"y_hat": torch.cat(decoded, dim=1)}
