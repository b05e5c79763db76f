r"""Latent codecs of GLIC and GABIC: what they share, and their fixed-point entropy coding.

Both codecs are CompressAI's :class:`~compressai.latent_codecs.HyperpriorLatentCodec`
(``{"hyper": HyperLatentCodec(h_a, EB, h_s), "y": ...}``) with their own ``y`` codecs, so a
model only wires ``g_a -> codec -> g_s`` (see :class:`gnn_lic.models.base.PaddedCompressionModel`):
``forward(y) -> {"likelihoods": {"y", "z"}, "y_hat"}``,
``compress(y) -> {"strings", "shape", "y_hat"}``, ``decompress(strings, shape) -> {"y_hat"}``.

* :func:`~gnn_lic.models.scctx.scctx_latent_codec` (GLIC Sec. 4.1.3, "SCCTX" of ELIC):
  uneven channel groups, each group coded in two checkerboard passes.
* :class:`~gnn_lic.models.channel_slice.ChannelSliceLatentCodec` (GABIC Sec. 3.2, eq. 3):
  equal channel slices with latent residual prediction.

Both compute the entropy parameters of ``compress``/``decompress`` in fixed point
(:mod:`gnn_lic.models.fixed_point`) by default (:class:`FixedPointHyperpriorCodec`), so the
decoded latents are bit-identical on every machine; ``forward`` (training, likelihoods)
stays float and differentiable. :func:`entropy_arithmetic` switches a model back to the
float path (the one of format-1 streams).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.latent_codecs import HyperpriorLatentCodec
from torch import Tensor, nn

from gnn_lic.models.fixed_point import ACT_FRAC_BITS, ACT_LIMIT, ACT_MAX, from_act, to_act, to_fixed

__all__ = ["ARITHMETICS", "SCHEME_ARITHMETICS", "FIXED_ARITHMETICS", "entropy_arithmetic", "supports_fixed_point", "FixedPointHyperpriorCodec",
           "RansCoder",
           "fixed_symbols", "fixed_z_hat", "fixed_dequantize"]

#: ``"fixed"``: deterministic fixed-point entropy parameters, float64 products of 16-bit
#: fractions (scheme fx16); ``"fixed8"``: the same with 8-bit weights and integer products
#: (scheme w8, the latent codecs' default); ``"float"``: the float networks
#: (format-1 streams; not portable across machines or thread counts)
ARITHMETICS = ("fixed", "fixed8", "float")
#: the command-line names of the fixed-point schemes -> their arithmetic
SCHEME_ARITHMETICS = {"fx16": "fixed", "w8": "fixed8"}
#: the fixed-point arithmetics and whether each uses scheme w8's integer products
FIXED_ARITHMETICS = {"fixed": False, "fixed8": True}


class _FixedNets:
    """Fixed-point twins of some float modules, rebuilt when any of their parameters changes."""

    def __init__(self):
        self.key = None
        self.nets: Dict[str, Any] = {}

    def get(self, modules: Dict[str, nn.Module], device: torch.device, int8: bool) -> Dict[str, Any]:
        params = [p for m in modules.values() for p in m.parameters()]
        key = (str(device), int8, tuple((p.data_ptr(), p._version, p.dtype) for p in params))
        if key != self.key:
            self.nets = {k: to_fixed(m, k, int8).to(device) for k, m in modules.items()}
            self.key = key
        return self.nets


def _check_arithmetic(mode: str) -> str:
    if mode not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {mode!r}")
    return mode


class FixedPointHyperpriorCodec(HyperpriorLatentCodec):
    """CompressAI's hyperprior codec whose ``y`` is coded with fixed-point entropy parameters.

    ``forward`` is CompressAI's (float, differentiable). With ``arithmetic = "fixed8"``
    (default) or ``"fixed"`` ``compress``/``decompress`` code ``z`` with the entropy bottleneck, then call
    :meth:`_code`, which evaluates the networks of :meth:`_fixed_modules` in fixed point
    (:mod:`gnn_lic.models.fixed_point`) and puts every symbol of one image into a single
    rANS string: ``strings = [[y string per image], z_strings]``, ``shape = (h_z, w_z)``
    (the latent is ``4 h_z x 4 w_z``); ``"fixed"`` is scheme fx16, ``"fixed8"`` scheme w8
    (:mod:`gnn_lic.models.fixed_point`). With ``arithmetic = "float"`` the float paths
    :meth:`_compress_float` / :meth:`_decompress_float` run (format-1 streams).
    """

    arithmetic: str = "fixed8"

    def _fixed_modules(self) -> Dict[str, nn.Module]:  # pragma: no cover - abstract
        """Name -> float module of every network :meth:`_code` runs in fixed point."""
        raise NotImplementedError

    def _code(self, z_hat: Tensor, y: Optional[Tensor] = None, strings: Optional[Sequence[bytes]] = None):
        """Encode ``y`` (``strings=None``) or decode ``strings``; returns ``(y_hat, y_strings)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def prepare(self) -> None:
        """Convert the networks of :meth:`_fixed_modules` for :attr:`arithmetic` now, on the device of the
        parameters (nothing for ``"float"``); they are kept until a parameter changes. The model's ``update``
        and ``compress`` call this before the analysis transform runs, so that the conversion's temporaries
        are freed before the transform's maps are allocated instead of lying among them: a lower peak of
        resident memory, the same networks."""
        if _check_arithmetic(self.arithmetic) != "float":
            param = next(self.parameters(), None)
            self._fixed_nets(param.device if param is not None else torch.device("cpu"))

    def _fixed_nets(self, device: torch.device) -> Dict[str, Any]:
        int8 = FIXED_ARITHMETICS.get(self.arithmetic, False)
        cache = self.__dict__.setdefault("_fixed_cache", {}).setdefault(int8, _FixedNets())  # one per scheme
        return cache.get(self._fixed_modules(), device, int8)

    def _compress_float(self, y: Tensor) -> Dict[str, Any]:
        return super().compress(y)

    def _decompress_float(self, strings: List[List[bytes]], shape: Any, **kwargs) -> Dict[str, Any]:
        return super().decompress(strings, shape, **kwargs)

    @staticmethod
    def _split_strings(strings: Any) -> Tuple[Sequence[bytes], Sequence[bytes]]:
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("strings must be [y_strings, z_strings]")
        y_strings, z_strings = strings
        if not isinstance(z_strings, (list, tuple)) or len(y_strings) != len(z_strings):
            raise ValueError(f"{len(y_strings)} y strings for {len(z_strings)} z strings")
        return y_strings, z_strings

    def compress(self, y: Tensor) -> Dict[str, Any]:
        if _check_arithmetic(self.arithmetic) == "float":
            return self._compress_float(y)
        hyper = self.latent_codec["hyper"]
        z = hyper.h_a(y)
        z_strings = hyper.entropy_bottleneck.compress(z)
        z_hat = hyper.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        y_hat, y_strings = self._code(z_hat, y=y)
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:]), "y_hat": y_hat}

    def decompress(self, strings: List[List[bytes]], shape: Any, **kwargs) -> Dict[str, Any]:
        if _check_arithmetic(self.arithmetic) == "float":
            return self._decompress_float(strings, shape, **kwargs)
        y_strings, z_strings = self._split_strings(strings)
        z_hat = self.latent_codec["hyper"].entropy_bottleneck.decompress(list(z_strings), tuple(shape))
        return {"y_hat": self._code(z_hat, strings=y_strings)[0]}


class entropy_arithmetic:  # noqa: N801 - used like a function: ``with entropy_arithmetic(net, "float"):``
    """Context manager: code ``net``'s latents with ``mode`` (``"fixed"`` or ``"float"``).

    Applies to every :class:`FixedPointHyperpriorCodec` in ``net``; the previous modes
    are restored on exit.
    """

    def __init__(self, net: nn.Module, mode: str):
        self.mode = _check_arithmetic(mode)
        self.codecs = [m for m in net.modules() if isinstance(m, FixedPointHyperpriorCodec)]
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
    return isinstance(getattr(net, "latent_codec", None), FixedPointHyperpriorCodec)


def fixed_symbols(y: Tensor, mu: Tensor) -> Tensor:
    """``round(y - mu)`` (``mu`` a fixed-point activation), bounded to the activation range."""
    q = torch.round(y.to(torch.float64) - from_act(mu, torch.float64))
    return torch.nan_to_num(q, nan=0.0).clamp_(-ACT_LIMIT, ACT_LIMIT)


def fixed_z_hat(eb: EntropyBottleneck, z_hat: Tensor) -> Tensor:
    """Fixed-point ``z_hat``: its integer symbols plus the medians on the grid.

    ``z_hat = symbols + medians`` was summed in the model's dtype; recovering the symbols
    (exact, they are integers) and adding the medians in fixed point makes the result the
    same for float32 and float64 models.
    """
    medians = eb._get_medians().detach().reshape(1, -1, 1, 1).to(z_hat.device)
    sym = torch.round(z_hat.to(torch.float64) - medians.to(torch.float64))
    return fixed_dequantize(sym, to_act(medians))


def fixed_dequantize(q: Tensor, mu: Tensor) -> Tensor:
    """Fixed-point ``q + mu`` (exact), clamped to the activation range."""
    return (q * float(2**ACT_FRAC_BITS) + mu).clamp_(-ACT_MAX, ACT_MAX)


class RansCoder:
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
        # NumPy converts the decoded list of Python ints faster than torch.tensor does
        rows = [
            torch.from_numpy(np.array(dec.decode_stream(indexes[b].reshape(-1).tolist(), cdf, lengths, offsets),
                                      dtype=np.float64))
            for b, dec in enumerate(self.coders)
        ]
        return torch.stack(rows).reshape(indexes.shape).to(indexes.device)

    def flush(self) -> List[bytes]:
        if self.split_blocks:  # all blocks of all images, for their byte count only
            return [b"".join(getattr(self, "done", []) + [enc.flush() for enc in self.coders])]
        return [enc.flush() for enc in self.coders]
