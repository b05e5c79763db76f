r"""GABIC's channel-slice entropy model with LRP, composed from CompressAI's latent codecs.

GABIC Sec. 3.2, eq. 3 (Minnen & Singh 2020, with the support/LRP details of the GABIC
authors' model): a hyperprior (:class:`~compressai.latent_codecs.HyperLatentCodec`)
whose synthesis has separate mean and scale branches, and a ``y`` codec of equal slices,
each conditioned on the hyper outputs and on the **first** ``max_support_slices``
decoded slices.

.. code-block:: none

             ┌─────┐  z  ┌────┐ z_hat ┌──────────────────────┐
    y ──┬─►──┤ h_a ├──►──┤ EB ├───►───┤ h_s = [h_mean_s | h_scale_s] ├──► params = [D_mu | D_sigma]
        │    └─────┘     └────┘       └──────────────────────┘                    │
        │                                                                          ▼
        └─►── slices y_0 .. y_{K-1} ──► GC(mu_i, sigma_i from params, y_bar_{<S}) ─► LRP ─► y_bar_i

State-dict keys: ``hyper.{h_a, entropy_bottleneck, h_s.mean, h_s.scale}`` and
``y.{cc_mean_transforms, cc_scale_transforms, lrp_transforms, gaussian_conditional}``;
checkpoints of the earlier flat layout (``h_a``, ``h_mean_s``, ``cc_mean_transforms``, ...)
load through :attr:`ChannelSliceLatentCodec.renamed_keys`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import HyperLatentCodec, HyperpriorLatentCodec, LatentCodec
from compressai.ops import quantize_ste
from torch import Tensor, nn

from gnn_lic.models.entropy import FixedPointHyperpriorCodec, RansCoder, fixed_dequantize, fixed_symbols, fixed_z_hat
from gnn_lic.models.fixed_point import ACT_MAX, FixedTable, from_act, scale_indexes, tanh_table
from gnn_lic.models.layers import conv3x3, conv_stack, ramp_widths, subpel_conv3x3

__all__ = ["MeanScaleSynthesis", "ChannelSliceConditional", "ChannelSliceLatentCodec"]


class MeanScaleSynthesis(nn.Module):
    r"""GABIC's hyper-synthesis: two branches :math:`h_{s,\mu}`, :math:`h_{s,\sigma}` of the same
    shape (``widths[0] -> widths[4]``, x4), output ``[D_mu | D_sigma]`` on the channels."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        self.mean = self._branch(widths)
        self.scale = self._branch(widths)

    @staticmethod
    def _branch(w: Sequence[int]) -> nn.Sequential:
        return nn.Sequential(
            conv3x3(w[0], w[0]), nn.GELU(),
            subpel_conv3x3(w[0], w[1], 2), nn.GELU(),
            conv3x3(w[1], w[2]), nn.GELU(),
            subpel_conv3x3(w[2], w[3], 2), nn.GELU(),
            conv3x3(w[3], w[4]),
        )  # fmt: skip

    def forward(self, z_hat: Tensor) -> Tensor:
        return torch.cat([self.mean(z_hat), self.scale(z_hat)], dim=1)


class ChannelSliceConditional(LatentCodec):
    r"""The ``y`` codec of GABIC eq. 3: equal slices, Gaussian conditionals and LRP.

    .. math::
        \mu_i = f_{\mu,i}(\mathcal D_\mu, \bar y_{<S}),\ \sigma_i = f_{\sigma,i}(\mathcal D_\sigma, \bar y_{<S}),\
        \hat y_i = Q(y_i - \mu_i) + \mu_i,\ \bar y_i = \hat y_i + \tfrac12\tanh r_i(\mathcal D_\mu, \bar y_{<S}, \hat y_i)

    where :math:`\bar y_{<S}` are the first ``min(i, S)`` decoded slices
    (``S = max_support_slices``; ``-1`` for all previous slices) and ``params`` is
    ``[D_mu | D_sigma]`` (``2M`` channels, cropped to the size of ``y``). All slices of
    one image go into a single rANS string: ``strings = [[y string per image]]``.
    """

    def __init__(self, M: int, num_slices: int, max_support_slices: int, cc_hidden: Sequence[int]):
        super().__init__()
        if M % num_slices:
            raise ValueError(f"M={M} is not divisible by num_slices={num_slices}")
        self.M = M
        self.num_slices = num_slices
        self.slice_channels = sc = M // num_slices
        self.max_support_slices = max_support_slices

        def nets(extra: int) -> nn.ModuleList:
            return nn.ModuleList(conv_stack([M + sc * (self.num_support(i) + extra), *cc_hidden, sc])
                                 for i in range(num_slices))

        self.cc_mean_transforms = nets(0)
        self.cc_scale_transforms = nets(0)
        self.lrp_transforms = nets(1)
        self.gaussian_conditional = GaussianConditional(None)

    def num_support(self, i: int) -> int:
        """How many decoded slices condition slice ``i``."""
        return i if self.max_support_slices < 0 else min(i, self.max_support_slices)

    def _slice_params(self, i: int, means: Tensor, scales: Tensor, decoded: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(mu_i, sigma_i, mean_support)`` of slice ``i`` from the decoded slices."""
        support = decoded[: self.num_support(i)]
        mean_support = torch.cat([means, *support], dim=1)
        mu = self.cc_mean_transforms[i](mean_support)
        sigma = self.cc_scale_transforms[i](torch.cat([scales, *support], dim=1))
        return mu, sigma, mean_support

    def _refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        lrp = self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(lrp)

    @staticmethod
    def _means_scales(params: Tensor, size: Sequence[int]) -> Tuple[Tensor, Tensor]:
        means, scales = params[..., : size[0], : size[1]].chunk(2, dim=1)
        return means, scales

    def forward(self, y: Tensor, params: Tensor) -> Dict[str, Any]:
        means, scales = self._means_scales(params, y.shape[-2:])
        decoded: List[Tensor] = []
        likelihoods: List[Tensor] = []
        for i, y_slice in enumerate(y.split(self.slice_channels, dim=1)):
            mu, sigma, mean_support = self._slice_params(i, means, scales, decoded)
            _, lik = self.gaussian_conditional(y_slice, sigma, means=mu)
            likelihoods.append(lik)
            y_hat_slice = quantize_ste(y_slice - mu) + mu
            decoded.append(self._refine(i, mean_support, y_hat_slice))
        return {"likelihoods": {"y": torch.cat(likelihoods, dim=1)}, "y_hat": torch.cat(decoded, dim=1)}

    def _code(self, params: Tensor, size: Sequence[int], coder: RansCoder, y: Optional[Tensor]) -> Tensor:
        """Float slices: encode ``y`` or decode into ``coder``; returns ``y_bar``."""
        means, scales = self._means_scales(params, size)
        gc = self.gaussian_conditional
        decoded: List[Tensor] = []
        for i in range(self.num_slices):
            mu, sigma, mean_support = self._slice_params(i, means, scales, decoded)
            sym = None if y is None else gc.quantize(y[:, i * self.slice_channels : (i + 1) * self.slice_channels],
                                                     "symbols", mu)
            sym = coder.code(gc, gc.build_indexes(sigma), sym)
            decoded.append(self._refine(i, mean_support, gc.dequantize(sym, mu)))
        return torch.cat(decoded, dim=1)

    def compress(self, y: Tensor, params: Tensor) -> Dict[str, Any]:
        coder = RansCoder(y.shape[0])
        y_hat = self._code(params, y.shape[-2:], coder, y)
        return {"strings": [coder.flush()], "shape": tuple(y.shape[-2:]), "y_hat": y_hat}

    def decompress(self, strings: List[List[bytes]], shape: Sequence[int], params: Tensor, **kwargs) -> Dict[str, Any]:
        (y_strings,) = strings
        return {"y_hat": self._code(params, shape, RansCoder(params.shape[0], y_strings), None)}


class ChannelSliceLatentCodec(FixedPointHyperpriorCodec):
    r"""Channel-wise autoregressive entropy model with LRP (GABIC eq. 3, and the authors' released model).

    CompressAI's hyperprior codec over ``{"hyper": HyperLatentCodec(h_a, EB,``
    :class:`MeanScaleSynthesis` ``), "y":`` :class:`ChannelSliceConditional` ``}``.

    Args:
        M (int): latent channels (divisible by ``num_slices``).
        N (int): hyper-latent channels.
        num_slices (int): number of equal slices (10 in GABIC).
        max_support_slices (int): ``S`` (5 in GABIC).
        cc_hidden (sequence of int): hidden widths of the slice networks (224, 176, 128, 64).
        hyper_widths (sequence of int or None): widths of the hyper transforms from
            ``N`` to ``M`` (default: 5 evenly spaced values, 192..320 for GABIC).

    ``compress`` returns ``strings = [[y_string per image], z_strings]`` and
    ``shape = (h_z, w_z)`` in both arithmetics. With ``arithmetic = "fixed8"`` (scheme w8, the
    default here) or ``"fixed"`` (scheme fx16) the hyper-synthesis, slice networks, LRP and
    tanh of ``compress``/``decompress`` run in fixed point (:mod:`gnn_lic.models.fixed_point`),
    so the decoded latents are bit-identical on every machine; ``"float"`` runs the float
    networks (format-1 streams). w8 is the default of this codec because its networks are
    3x3 convolutions whose integer products run faster than fx16's float64 ones on CPUs that
    multiply bytes natively (at paper size, faster than the float path), and at fx16's speed
    elsewhere; trained models code at the same rate with either.
    """

    arithmetic: str = "fixed8"

    #: the flat layout of checkpoints written before the codec composed CompressAI's hyperprior
    renamed_keys = {
        "h_a.": "hyper.h_a.",
        "entropy_bottleneck.": "hyper.entropy_bottleneck.",
        "h_mean_s.": "hyper.h_s.mean.",
        "h_scale_s.": "hyper.h_s.scale.",
        "cc_mean_transforms.": "y.cc_mean_transforms.",
        "cc_scale_transforms.": "y.cc_scale_transforms.",
        "lrp_transforms.": "y.lrp_transforms.",
        "gaussian_conditional.": "y.gaussian_conditional.",
    }

    def __init__(
        self,
        M: int = 320,
        N: int = 192,
        num_slices: int = 10,
        max_support_slices: int = 5,
        cc_hidden: Sequence[int] = (224, 176, 128, 64),
        hyper_widths: Optional[Sequence[int]] = None,
    ):
        w = list(hyper_widths) if hyper_widths is not None else ramp_widths(N, M, 4)
        if len(w) != 5 or w[0] != N or w[-1] != M:
            raise ValueError(f"hyper_widths must be 5 widths from N={N} to M={M}, got {w}")
        h_a = nn.Sequential(
            conv3x3(M, M), nn.GELU(),
            conv3x3(M, w[3]), nn.GELU(),
            conv3x3(w[3], w[2], stride=2), nn.GELU(),
            conv3x3(w[2], w[1]), nn.GELU(),
            conv3x3(w[1], N, stride=2),
        )  # fmt: skip
        h_s = MeanScaleSynthesis(w)
        y = ChannelSliceConditional(M, num_slices, max_support_slices, cc_hidden)
        eb = EntropyBottleneck(N)  # made last, as in the earlier flat layout: a seed draws the same weights
        super().__init__(latent_codec={"hyper": HyperLatentCodec(eb, h_a, h_s, quantizer="ste"), "y": y})

    def _compress_float(self, y: Tensor) -> Dict[str, Any]:
        out = HyperpriorLatentCodec.compress(self, y)
        return {**out, "shape": tuple(out["shape"]["hyper"])}

    def _decompress_float(self, strings: List[List[bytes]], shape: Sequence[int], **kwargs) -> Dict[str, Any]:
        self._split_strings(strings)
        hz, wz = shape
        return HyperpriorLatentCodec.decompress(self, strings, {"hyper": (hz, wz), "y": (4 * hz, 4 * wz)})

    def _fixed_modules(self) -> Dict[str, nn.Module]:
        ycodec = self.latent_codec["y"]
        modules: Dict[str, nn.Module] = {"h_mean_s": self.hyper.h_s.mean, "h_scale_s": self.hyper.h_s.scale}
        for i in range(ycodec.num_slices):
            modules[f"cc_mean{i}"] = ycodec.cc_mean_transforms[i]
            modules[f"cc_scale{i}"] = ycodec.cc_scale_transforms[i]
            modules[f"lrp{i}"] = ycodec.lrp_transforms[i]
        return modules

    def _code(self, z_hat: Tensor, y: Optional[Tensor] = None, strings: Optional[Sequence[bytes]] = None):
        """Fixed-point slices (eq. 3 with LRP); encodes ``y`` or decodes ``strings``."""
        ycodec = self.latent_codec["y"]
        nets = self._fixed_nets(z_hat.device)
        if "tanh" not in nets:
            nets["tanh"] = FixedTable(tanh_table(), "tanh").to(z_hat.device)
        zq = fixed_z_hat(self.hyper.entropy_bottleneck, z_hat)
        size = y.shape[-2:] if y is not None else (4 * z_hat.shape[-2], 4 * z_hat.shape[-1])
        means = nets["h_mean_s"](zq)[..., : size[0], : size[1]]
        scales = nets["h_scale_s"](zq)[..., : size[0], : size[1]]
        coder = RansCoder(z_hat.shape[0], strings)
        gc = ycodec.gaussian_conditional
        y_slices = y.split(ycodec.slice_channels, dim=1) if y is not None else [None] * ycodec.num_slices
        decoded: List[Tensor] = []
        for i, y_slice in enumerate(y_slices):
            support = decoded[: ycodec.num_support(i)]
            mean_support = torch.cat([means, *support], dim=1)
            mu = nets[f"cc_mean{i}"](mean_support)
            sigma = nets[f"cc_scale{i}"](torch.cat([scales, *support], dim=1))
            indexes = scale_indexes(gc, sigma)
            sym = None if y_slice is None else fixed_symbols(y_slice, mu)
            y_hat_slice = fixed_dequantize(coder.code(gc, indexes, sym), mu)
            lrp = nets[f"lrp{i}"](torch.cat([mean_support, y_hat_slice], dim=1))
            refined = y_hat_slice + torch.round(nets["tanh"](lrp) * 0.5)
            decoded.append(refined.clamp_(-ACT_MAX, ACT_MAX))
        y_hat = from_act(torch.cat(decoded, dim=1), z_hat.dtype)
        return y_hat, (None if coder.decoding else coder.flush())
