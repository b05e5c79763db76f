r"""Shared plumbing of the gnn_lic models: padding, cropping and the codec contract.

Every model is ``g_a -> latent_codec -> g_s`` on top of CompressAI's
:class:`~compressai.models.CompressionModel` (which owns ``update``,
``aux_loss`` and the CDF-buffer-aware ``load_state_dict``). This base adds what
the paper models leave to their test scripts: **any image size works**.

.. code-block:: none

          pad (replicate,            ┌───┐  y  ┌──────────────┐ y_hat ┌───┐          crop to
    x ──► bottom/right, to a ──►─────┤g_a├──►──┤ latent_codec ├───►───┤g_s├──►── x_hat (H, W)
          multiple of pad_multiple)  └───┘     └──────────────┘       └───┘

Only the strided convolutions need the multiple (16 for ``g_a``, times 4 for
the hyperprior: 64); the graph blocks accept any size. ``forward`` returns the
likelihoods of the *padded* latents, so a rate in bits per pixel divides their
``-log2`` sum by the **original** ``H * W`` (as GLIC's test script does).

Exactness of the codec: rANS decoding returns the very symbols
:math:`\mathrm{round}(y - \mu)` that ``compress`` computed, and ``compress`` and
``decompress`` run the same operations on the same tensors, so ``decompress``
reproduces ``compress``'s ``y_hat`` bit for bit. Against the eval-mode
``forward`` the difference is floating-point noise only:

* GABIC/WACNN (:class:`~gnn_lic.models.entropy.ChannelSliceLatentCodec`) run the
  same tensors through the same layers in both paths: **exactly equal** (0).
* The GLIC family (CompressAI's checkerboard codec) computes the entropy
  parameters on full-size maps in ``forward`` but on the half-width
  "unembedded" anchor/non-anchor maps in ``compress``; the pointwise network
  gives the same numbers up to summation order (means differ by ~1e-7), so
  ``y_hat = round(y - mu) + mu`` differs by at most one ulp of ``y``. On the
  untrained, latent-amplified tiny test models ``|x_hat|`` differs by at most
  ~5e-6; the tests use ``atol = 1e-4``. A rounding flip (``y - mu`` within 1e-7
  of a half-integer) would give a larger, local difference; it was never observed.

These statements hold for the float entropy path
(:func:`~gnn_lic.models.entropy.entropy_arithmetic` ``"float"``). By default both latent
codecs code with fixed-point entropy parameters (:mod:`gnn_lic.models.fixed_point`):
``decompress`` still reproduces ``compress`` bit for bit, on any machine, but the means
differ from the float ones by about :math:`2^{-16}`, so a latent near a rounding tie may
quantise the other way than in ``forward``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from torch import Tensor, nn

from gnn_lic.models.variable_rate import GainUnits, QualityLike

__all__ = ["pad_to_multiple", "crop_to", "to_jsonable", "from_jsonable", "PaddedCompressionModel"]


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "replicate") -> Tuple[Tensor, Tuple[int, int]]:
    """Pad ``x`` at the bottom and right so that ``H`` and ``W`` are multiples of ``multiple``.

    Returns the padded tensor and the original ``(H, W)``.

    >>> y, hw = pad_to_multiple(torch.zeros(1, 3, 33, 47), 16)
    >>> tuple(y.shape), hw
    ((1, 3, 48, 48), (33, 47))
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (int(h), int(w))


def crop_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Keep the top-left ``size = (H, W)`` pixels of ``x``."""
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {(h, w)}")
    return x[..., :h, :w]


def to_jsonable(value: Any) -> Any:
    """Shapes as nested lists / dicts of ints (``torch.Size`` and tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return to_jsonable(value.tolist())
    return int(value)


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable` for the latent codecs: lists become tuples."""
    if isinstance(value, dict):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(from_jsonable(v) for v in value)
    return value


#: constructor arguments added after format-2 streams were first written: at these values
#: they are left out of ``init_config``, so the identity of every model that existed
#: before them (and the streams it wrote) stays the same
IDENTITY_NEUTRAL_ARGS: Dict[str, Any] = {"rate_lambdas": None}


class PaddedCompressionModel(CompressionModel):
    """``g_a -> latent_codec -> g_s`` with internal padding to :attr:`pad_multiple`.

    Subclasses set ``g_a``, ``g_s`` and ``latent_codec``; the latent codec follows
    CompressAI's latent-codec contract: ``forward(y) -> {"likelihoods", "y_hat"}``,
    ``compress(y) -> {"strings", "shape", ...}``, ``decompress(strings, shape) -> {"y_hat"}``.

    ``compress`` returns ``{"strings", "shape": {"latent": ..., "image": [H, W]}}``
    (JSON-able ints); ``decompress`` crops to ``image`` and clamps to ``[0, 1]``.
    """

    #: the padded height and width are multiples of this
    pad_multiple: int = 64
    #: every constructor argument of the most derived class, defaults applied (set by ``__init__``)
    init_config: Dict[str, Any]

    def __init_subclass__(cls, **kwargs):
        """Record the fully resolved constructor arguments of every subclass instance.

        The file codec hashes them (with the class name) as the model identity, so a
        changed preset or graph hyper-parameter changes the identity even when
        ``model_config`` (the arguments given to ``create_model``) does not.
        """
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            if type(self).__init__ is recording_init:  # the most derived class records
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                args_ = dict(bound.arguments)
                args_.pop("self", None)
                for name, p in signature.parameters.items():  # flatten **kwargs
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        args_.update(args_.pop(name, {}))
                for name, default in IDENTITY_NEUTRAL_ARGS.items():  # added later: at the default, no trace
                    if name in args_ and args_[name] == default:
                        del args_[name]
                object.__setattr__(self, "init_config", {"class": type(self).__qualname__, "args": args_})

        cls.__init__ = recording_init
    g_a: nn.Module
    g_s: nn.Module
    latent_codec: nn.Module
    #: gain units of a variable-rate model (:mod:`gnn_lic.models.variable_rate`), else None
    gain: Optional[GainUnits]

    def _init_rate(self, rate_lambdas: Optional[Sequence[float]], channels: int) -> None:
        """Make the model variable-rate (gain units on its ``channels`` latent channels) when ``rate_lambdas`` is given."""
        self.gain = None if rate_lambdas is None else GainUnits(channels, rate_lambdas)

    @property
    def gain_units(self) -> Optional[GainUnits]:
        """The gain units, or None (also for a subclass that never called :meth:`_init_rate`)."""
        return getattr(self, "gain", None)

    @property
    def qualities(self) -> int:
        """Number of trained quality levels (1 for a single-rate model)."""
        return 1 if self.gain_units is None else self.gain_units.levels

    def _quality(self, quality: Optional[QualityLike]) -> Optional[QualityLike]:
        """The quality to code at: None for a single-rate model; by default ``default_quality``, else the top level."""
        if self.gain_units is None:
            if quality is not None:
                raise ValueError("this model serves one rate; quality is only for variable-rate models "
                                 "(built with rate_lambdas)")
            return None
        if quality is None:
            default = getattr(self, "default_quality", None)
            return self.gain.levels if default is None else default
        return quality

    def forward(self, x: Tensor, quality: Optional[QualityLike] = None) -> Dict[str, Any]:
        """Reconstruction and likelihoods; ``quality`` (scalar or one per image) for a variable-rate model."""
        q = self._quality(quality)
        x_pad, hw = pad_to_multiple(x, self.pad_multiple)
        y = self.g_a(x_pad)
        if q is not None:
            y = self.gain.scale(y, q)
        y_out = self.latent_codec(y)
        y_hat = y_out["y_hat"] if q is None else self.gain.unscale(y_out["y_hat"], q)
        x_hat = self.g_s(y_hat)
        return {"x_hat": crop_to(x_hat, hw), "likelihoods": y_out["likelihoods"]}

    def ortho_loss(self) -> Tensor:
        """Sum of the orthogonality losses of every OLP (0 for a model without one)."""
        from gnn_lic.models.wavelet import OLP  # noqa: PLC0415 - avoid an import cycle in docs

        losses = [m.loss() for m in self.modules() if isinstance(m, OLP)]
        if not losses:
            return next(self.parameters()).new_zeros(())
        return torch.stack(losses).sum()

    @torch.no_grad()
    def compress(self, x: Tensor, quality: Optional[float] = None) -> Dict[str, Any]:
        """``{"strings", "shape"}``; a variable-rate model records the (scalar) ``quality`` in ``shape``."""
        q = self._quality(quality)
        x_pad, hw = pad_to_multiple(x, self.pad_multiple)
        y = self.g_a(x_pad)
        if q is not None:
            q = float(q)
            y = self.gain.scale(y, q)
        out = self.latent_codec.compress(y)
        shape = {"latent": to_jsonable(out["shape"]), "image": list(hw)}
        if q is not None:
            shape["quality"] = q
        return {"strings": out["strings"], "shape": shape}

    @torch.no_grad()
    def decompress(self, strings: List[Any], shape: Dict[str, Any]) -> Dict[str, Tensor]:
        if not isinstance(shape, dict) or "latent" not in shape or "image" not in shape:
            raise ValueError("shape must be the dict returned by compress: {'latent': ..., 'image': [H, W]}")
        q = self._quality(shape.get("quality"))
        y_hat = self.latent_codec.decompress(strings, from_jsonable(shape["latent"]))["y_hat"]
        if q is not None:
            y_hat = self.gain.unscale(y_hat, q)
        x_hat = self.g_s(y_hat)
        return {"x_hat": crop_to(x_hat, shape["image"]).clamp_(0, 1)}
