r"""GLIC's space-channel context model (SCCTX of ELIC), composed from CompressAI's latent codecs.

GLIC Sec. 4.1.3, as in the authors' released model: uneven channel groups, each group
coded in two checkerboard passes, on a hyperprior.

.. code-block:: none

             ┌─────┐  z  ┌────┐ z_hat ┌─────┐
    y ──┬─►──┤ h_a ├──►──┤ EB ├───►───┤ h_s ├──►── side params ───────────────┐
        │    └─────┘     └────┘       └─────┘                                  │
        │  groups y0 | y1 | ... | yK      y_hat_{<k} ─► channel ctx_k ─────────┤
        │                                  anchors   ─► checkerboard ctx ──────┤
        └─►── y_k ──► GC( scales, means = param-agg_k[spatial, channel, side] )┘
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d
from compressai.ops import quantize_ste
from torch import Tensor, nn

from gnn_lic.models.entropy import FixedPointHyperpriorCodec, RansCoder, fixed_dequantize, fixed_symbols, fixed_z_hat
from gnn_lic.models.fixed_point import from_act, scale_indexes
from gnn_lic.models.layers import GatedTransformCNN, ParameterAggregationBlock, channel_ramp, conv3x3, subpel_conv3x3

__all__ = ["ELIC_GROUPS", "elic_groups", "glic_hyper_transforms", "CheckerboardContextConv2d", "checkerboard_context",
           "HalfMapCheckerboardLatentCodec", "SCCTXLatentCodec", "scctx_latent_codec"]

#: ELIC's uneven channel groups for M = 320 (the GLIC authors' model keeps them)
ELIC_GROUPS = (16, 16, 32, 64, 192)


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


def glic_hyper_transforms(M: int, hyper_channels: int, side_channels: int, depth: int = 2
                          ) -> Tuple[nn.Sequential, nn.Sequential]:
    """GLIC's ``h_a`` (``M -> hyper``, /4) and ``h_s`` (``hyper -> side``, x4), as in the authors' released model.

    Each resolution step is followed by ``depth`` :class:`GatedTransformCNN` blocks
    (expansion 2): ``h_a`` = conv s1, blocks, conv s2, blocks, conv s2;
    ``h_s`` = subpel x2, blocks, subpel x2, blocks, conv s1.
    """

    def blocks():
        return [GatedTransformCNN(hyper_channels, expansion=2) for _ in range(depth)]

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


class CheckerboardContextConv2d(CheckerboardMaskedConv2d):
    """CompressAI's checkerboard-masked convolution, masking its weight in place.

    CompressAI's ``forward`` sets ``weight.data = weight.data * mask``: a new tensor on every
    call, so anything keyed on the weight's storage (the fixed-point networks' cache,
    :class:`~gnn_lic.models.entropy.FixedPointHyperpriorCodec`) sees a new weight after every
    float forward. Multiplying in place gives the same values, output and gradient, in the
    same storage. Its state dict is CompressAI's.
    """

    def forward(self, x: Tensor) -> Tensor:
        self.weight.data.mul_(self.mask)
        return nn.Conv2d.forward(self, x)


def checkerboard_context(in_ch: int, out_ch: int) -> CheckerboardContextConv2d:
    """Checkerboard-masked 5x5 spatial context convolution (ELIC's), with its weight masked from the start.

    Masking once at construction makes the masking of every call a no-op, so the state dict
    (and a model fingerprint) does not change on the first forward or compress.
    """
    conv = CheckerboardContextConv2d(in_ch, out_ch, kernel_size=5, stride=1, padding=2)
    with torch.no_grad():
        conv.weight.mul_(conv.mask)
    return conv


class HalfMapCheckerboardLatentCodec(CheckerboardLatentCodec):
    r"""CompressAI's checkerboard codec whose two-pass forward runs the parameter network on the coded half only.

    CompressAI's ``"twopass"`` forward evaluates ``entropy_parameters`` on the whole map in both
    passes and keeps the anchors' parameters from the first, the non-anchors' from the second.
    With a pointwise parameter network (every convolution 1x1, as SCCTX's is: GLIC Fig. 2(c))
    a position's parameters depend on its own context only, so each pass here runs the network
    on the half of the positions it keeps, gathered into a map of half the width
    (:meth:`unembed`):

    .. math:: \Phi_s = f\big([\,\mathrm{ctx}_s \,|\, \psi\,]_{P_s}\big),
              \quad s \in \{\text{anchor}, \text{non-anchor}\}

    with :math:`P_s` the positions of pass :math:`s`. The model, its parameters, ``y_hat`` and
    likelihoods are CompressAI's (up to the rounding of products over maps of another shape),
    at half the parameter network's work. A network with a wider kernel, or a map of odd width,
    takes CompressAI's forward.
    """

    def _pointwise(self) -> bool:
        return all(m.kernel_size == (1, 1) for m in self.entropy_parameters.modules() if isinstance(m, nn.Conv2d))

    def _forward_twopass(self, y: Tensor, side_params: Tensor) -> Dict[str, Any]:
        if y.shape[-1] % 2 or not self._pointwise():
            return super()._forward_twopass(y, side_params)
        B, _, H, W = y.shape
        y_half, side_half = self.unembed(y), self.unembed(side_params)  # [0]: anchors, [1]: non-anchors
        params, y_hat = [], []
        for i in range(2):
            if i == 0:  # no spatial context for the anchors
                ctx = y.new_zeros((B, self.context_prediction.out_channels, H, W // 2))
            else:
                anchors = self.embed(torch.stack([y_hat[0], torch.zeros_like(y_hat[0])]))
                ctx = self.unembed(self.context_prediction(anchors))[1]
            params.append(self.entropy_parameters(self.merge(ctx, side_half[i])))
            _, means = self.latent_codec["y"]._chunk(params[i])
            y_hat.append(quantize_ste(y_half[i] - means) + means)
        y_out = self.latent_codec["y"](y, self.embed(torch.stack(params)))
        return {"likelihoods": {"y": y_out["likelihoods"]["y"]}, "y_hat": self.embed(torch.stack(y_hat))}


class SCCTXLatentCodec(FixedPointHyperpriorCodec):
    r"""CompressAI's hyperprior codec over channel groups of checkerboard codecs, coded deterministically.

    ``forward`` is CompressAI's (float, differentiable; each group's parameter network runs on the
    half of the positions each pass keeps, :class:`HalfMapCheckerboardLatentCodec`). With ``arithmetic = "fixed8"``
    (default, scheme w8) or ``"fixed"`` (fx16) ``compress``/``decompress`` evaluate ``h_s``, every channel context,
    checkerboard context and parameter network in fixed point
    (:mod:`gnn_lic.models.fixed_point`), in the same order as CompressAI's codecs: for
    group :math:`k`, anchors (spatial context 0) then non-anchors (spatial context from the
    decoded anchors), with :math:`\hat y_k = q + \mu` on the fixed-point grid. Every
    symbol of one image goes into a single rANS string (see
    :class:`~gnn_lic.models.entropy.FixedPointHyperpriorCodec`). With
    ``arithmetic = "float"`` the CompressAI paths run unchanged (format-1 streams).
    """

    def _fixed_modules(self) -> Dict[str, nn.Module]:
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

    def _code(self, z_hat: Tensor, y: Optional[Tensor] = None, strings: Optional[Sequence[bytes]] = None):
        """Encode ``y`` (``strings=None``) or decode ``strings``; returns ``(y_hat, y_strings)``."""
        ycodec = self.latent_codec["y"]
        nets = self._fixed_nets(z_hat.device)
        side = nets["h_s"](fixed_z_hat(self.latent_codec["hyper"].entropy_bottleneck, z_hat))
        B, _, H, W = side.shape
        groups = list(ycodec.groups)
        y_hat = side.new_zeros((B, sum(groups), H, W))
        coder = RansCoder(B, strings)
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
                sym = None if y is None else fixed_symbols(y[:, start : start + g][:, :, mask], means)
                sym = coder.code(gc, indexes, sym)
                y_hat_k[:, :, mask] = fixed_dequantize(sym, means)
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
            make_layer=GatedTransformCNN,
        )
        for k in range(1, len(groups))
    }
    group_codecs = {
        f"y{k}": HalfMapCheckerboardLatentCodec(
            latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
            entropy_parameters=channel_ramp(
                2 * g + (2 * g if k > 0 else 0) + side_channels,
                2 * g,
                min_ch=param_min_channels,
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
