"""Fixed-point twins of the float entropy-parameter networks (:func:`to_fixed`)."""

from __future__ import annotations

from typing import Callable, Dict, List

from torch import Tensor, nn

from gnn_lic.models.fixed_point.blocks import (
    FixedLayerNorm,
    FixedLeakyReLU,
    FixedSequential,
    GatedFFN,
    Identity,
    PixelShuffle,
    Residual,
)
from gnn_lic.models.fixed_point.conv import FixedConv2d
from gnn_lic.models.fixed_point.tables import FixedTable, gelu_table

__all__ = ["to_fixed", "fixed_networks"]


def _convert_children(seq: nn.Sequential, name: str, int8: bool) -> List[Callable]:
    return [to_fixed(m, f"{name}.{i}", int8) for i, m in enumerate(seq)]


def to_fixed(module: nn.Module, name: str = "net", int8: bool = False) -> Callable[[Tensor], Tensor]:
    """Fixed-point twin of a float entropy-parameter network (input and output: activations).

    ``int8``: convolutions that are not depthwise use scheme ``w8``'s 8-bit weights and
    integer products (:mod:`~gnn_lic.models.fixed_point.int8`); otherwise the float64
    products of scheme ``fx16``.

    Supported: ``Conv2d`` (incl. CompressAI's masked convolutions), ``Sequential``,
    ``GELU`` (exact form), ``LeakyReLU``, ``PixelShuffle``, ``Identity``, and the gnn_lic
    blocks ``LayerNorm2d``, ``GatedFFN``, ``DepthwiseConvBlock``, ``GatedTransformCNN``,
    ``ParameterAggregationBlock``. Anything else raises ``TypeError``.
    """
    from gnn_lic.models.layers import (  # noqa: PLC0415 - layers imports the graph blocks
        DepthwiseConvBlock,
        GatedTransformCNN,
        ParameterAggregationBlock,
    )
    from gnn_lic.models.layers import GatedFFN as FloatGatedFFN  # noqa: PLC0415
    from gnn_lic.nn.blocks import LayerNorm2d  # noqa: PLC0415

    if isinstance(module, nn.Conv2d):
        return FixedConv2d(module, name, int8)
    if isinstance(module, nn.Sequential):
        return FixedSequential(_convert_children(module, name, int8))
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise TypeError(f"{name}: only the exact (erf) GELU is supported")
        return FixedTable(gelu_table(), "gelu")
    if isinstance(module, nn.LeakyReLU):
        return FixedLeakyReLU(module.negative_slope)
    if isinstance(module, nn.PixelShuffle):
        return PixelShuffle(module.upscale_factor)
    if isinstance(module, nn.Identity):
        return Identity()
    if isinstance(module, LayerNorm2d):
        return FixedLayerNorm(module, name)
    if isinstance(module, FloatGatedFFN):
        return GatedFFN(module, name, int8)
    if isinstance(module, DepthwiseConvBlock):
        return Residual(to_fixed(module.skip, f"{name}.skip", int8), to_fixed(module.body, f"{name}.body", int8),
                        "parallel")
    if isinstance(module, GatedTransformCNN):
        ffn = FixedSequential([FixedLayerNorm(module.norm, f"{name}.norm"), GatedFFN(module.ffn, f"{name}.ffn", int8)])
        return Residual(to_fixed(module.dwconv, f"{name}.dwconv", int8), ffn, "serial")
    if isinstance(module, ParameterAggregationBlock):
        ffn = FixedSequential([FixedLayerNorm(module.norm, f"{name}.norm"), GatedFFN(module.ffn, f"{name}.ffn", int8)])
        return Residual(FixedConv2d(module.proj, f"{name}.proj", int8), ffn, "serial")
    raise TypeError(f"{name}: no fixed-point version of {type(module).__name__}")


def fixed_networks(modules: Dict[str, nn.Module], int8: bool = False) -> Dict[str, Callable[[Tensor], Tensor]]:
    """:func:`to_fixed` of every entry, named by its key (for error messages)."""
    return {k: to_fixed(m, k, int8) for k, m in modules.items()}
