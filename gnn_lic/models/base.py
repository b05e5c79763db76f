r"""Shared plumbing of the gnn_lic models: padding, cropping and the codec contract.

Every model is CompressAI's :class:`~compressai.models.SimpleVAECompressionModel`,
``g_a -> latent_codec -> g_s`` (its :class:`~compressai.models.CompressionModel` owns
``update``, ``aux_loss`` and the CDF-buffer-aware ``load_state_dict``). This base adds
what the paper models leave to their test scripts: **any image size works**.

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

* GABIC/WACNN (:class:`~gnn_lic.models.channel_slice.ChannelSliceLatentCodec`) run the
  same tensors through the same layers in both paths: **exactly equal**.
* The GLIC family (CompressAI's checkerboard codec) computes the entropy
  parameters on full-size maps in ``forward`` but on the half-width
  "unembedded" anchor/non-anchor maps in ``compress``; the pointwise network
  gives the same numbers up to summation order, so the means, and
  ``y_hat = round(y - mu) + mu`` with them, differ by float rounding (the tests
  bound ``x_hat`` with an absolute tolerance). Only a ``y - mu`` within that
  rounding of a half-integer would quantise differently, a larger but local difference.

These statements hold for the float entropy path
(:func:`~gnn_lic.models.entropy.entropy_arithmetic` ``"float"``). By default both latent
codecs code with fixed-point entropy parameters (:mod:`gnn_lic.models.fixed_point`):
``decompress`` still reproduces ``compress`` bit for bit, on any machine, but the means
differ from the float ones by up to the fixed-point step :math:`2^{-16}`, so a latent near
a rounding tie may quantise the other way than in ``forward``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.models import SimpleVAECompressionModel
from torch import Tensor, nn

from gnn_lic.models.variable_rate import GainUnits, QualityLike
from gnn_lic.models.wavelet import OLP
from gnn_lic.nn import recompute
from gnn_lic.utils import module_bytes

__all__ = ["pad_to_multiple", "crop_to", "to_jsonable", "from_jsonable", "upgrade_state_dict", "earlier_state_dict",
           "PaddedCompressionModel"]


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


# ------------------------------------------------------------------- state-dict key history
#
# A module whose parameters moved declares ``renamed_keys = {old: new}``: key prefixes
# relative to the module, as PyTorch modules version their own state (``_version`` and
# ``_load_from_state_dict``). Checkpoints written before the move load through
# :func:`upgrade_state_dict`; :func:`earlier_state_dict` gives the state under the old names,
# which the file codec needs to recognise streams encoded before the move (its model identity
# hashes the state-dict keys).


def _renames(net: nn.Module) -> List[Tuple[str, str]]:
    """``(old, new)`` full key prefixes of every module of ``net``, parents first."""
    out = []
    for name, module in net.named_modules():
        prefix = f"{name}." if name else ""
        out += [(prefix + old, prefix + new) for old, new in getattr(module, "renamed_keys", {}).items()]
    return out


def _rename(state: Mapping[str, Any], pairs: List[Tuple[str, str]]) -> "OrderedDict[str, Any]":
    def rename(key: str) -> str:
        for src, dst in pairs:
            if key.startswith(src):
                key = dst + key[len(src):]
        return key

    out = OrderedDict((rename(k), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # per-module versions, keyed by module path (no trailing dot)
        out._metadata = OrderedDict((rename(k + ".")[:-1] if k else k, v) for k, v in metadata.items())
    return out


def upgrade_state_dict(net: nn.Module, state: Mapping[str, Any]) -> Mapping[str, Any]:
    """``state`` with the keys of earlier layouts of ``net``'s modules renamed to the current ones.

    Keys already in the current layout are kept; ``state`` is returned unchanged when no
    module of ``net`` was renamed.
    """
    pairs = _renames(net)
    return _rename(state, pairs) if pairs else state


def earlier_state_dict(net: nn.Module) -> "OrderedDict[str, Any] | None":
    """``net.state_dict()`` under the keys its modules had before their renames, or ``None`` (no renames)."""
    pairs = [(new, old) for old, new in reversed(_renames(net))]  # children first
    return _rename(net.state_dict(), pairs) if pairs else None


#: constructor arguments added after format-2 streams were first written: at these values
#: they are left out of ``init_config``, so the identity of every model that existed
#: before them (and the streams it wrote) stays the same
IDENTITY_NEUTRAL_ARGS: Dict[str, Any] = {"rate_lambdas": None}


class PaddedCompressionModel(SimpleVAECompressionModel):
    """CompressAI's ``g_a -> latent_codec -> g_s`` with internal padding to :attr:`pad_multiple`.

    Subclasses set ``g_a``, ``g_s`` and ``latent_codec``; the latent codec follows
    CompressAI's latent-codec contract: ``forward(y) -> {"likelihoods", "y_hat"}``,
    ``compress(y) -> {"strings", "shape", ...}``, ``decompress(strings, shape) -> {"y_hat"}``.

    ``compress`` returns ``{"strings", "shape": {"latent": ..., "image": [H, W]}}``
    (JSON-able ints); ``decompress`` crops to ``image`` (CompressAI's clamps to ``[0, 1]``).
    ``load_state_dict`` also accepts the keys of earlier layouts (:func:`upgrade_state_dict`).

    A variable-rate model (built with ``rate_lambdas``, :meth:`_init_rate`) scales the latent
    by its gain units around the latent codec and takes a ``quality`` in ``forward``,
    ``compress`` (recorded in ``shape``) and ``decompress`` (read from ``shape``).
    """

    #: the padded height and width are multiples of this
    pad_multiple: int = 64
    #: every constructor argument of the most derived class, defaults applied (set by ``__init__``)
    init_config: Dict[str, Any]

    def __init_subclass__(cls, **kwargs):
        """Record the fully resolved constructor arguments of every subclass instance.

        The file codec hashes them (with the class name) as the model identity, so a
        changed preset or graph hyper-parameter changes the identity even when
        ``model_config`` (the arguments given to ``create_model``) does not. An options
        object (a dataclass) is recorded field by field, so grouping options into one
        does not change the identity.
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
                object.__setattr__(self, "init_config", {"class": type(self).__qualname__,
                                                         "args": _flat_arguments(signature, bound.arguments)})

        cls.__init__ = recording_init

    #: gain units of a variable-rate model (:mod:`gnn_lic.models.variable_rate`), else None
    gain: Optional[GainUnits]
    #: under a tight memory budget (:func:`gnn_lic.codec.budget.job_plan`), the block size in bytes below which
    #: freed memory is kept for reuse, where the model's band temporaries gain from it; None: they do not
    partial_mmap_threshold: Optional[int] = None

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
        if torch.is_grad_enabled() and recompute.enabled():  # maps made again by cheap steps are not kept
            with recompute.recomputed_saves():
                return self._padded_forward(x, quality)
        return self._padded_forward(x, quality)

    def _padded_forward(self, x: Tensor, quality: Optional[QualityLike]) -> Dict[str, Any]:
        q = self._quality(quality)
        x_pad, hw = pad_to_multiple(x, self.pad_multiple)
        if q is None:
            out = super().forward(x_pad)
        else:  # CompressAI's forward with the gains around the latent codec
            y_out = self.latent_codec(self.gain.scale(self.g_a(x_pad), q))
            out = {"x_hat": self.g_s(self.gain.unscale(y_out["y_hat"], q)), "likelihoods": y_out["likelihoods"]}
        return {"x_hat": crop_to(out["x_hat"], hw), "likelihoods": out["likelihoods"]}

    def ortho_loss(self) -> Tensor:
        """Sum of the orthogonality losses of every OLP (0 for a model without one)."""
        losses = [m.loss() for m in self.modules() if isinstance(m, OLP)]
        if not losses:
            return next(self.parameters()).new_zeros(())
        return torch.stack(losses).sum()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True):
        return super().load_state_dict(upgrade_state_dict(self, state_dict), strict=strict)

    def map_bytes_per_pixel(self) -> float:
        """Bytes per image pixel of the feature maps held at once without autograd (for
        :meth:`memory_estimate`): here 12 maps of the first convolution's width at 1/2
        resolution, for transforms that hold their high-resolution maps whole."""
        conv = next(m for m in self.g_a.modules() if isinstance(m, nn.Conv2d))
        return 12 * conv.out_channels * 4 / 4

    def memory_estimate(self, height: int, width: int) -> int:
        """Rough peak bytes of ``compress`` or ``decompress`` of a ``height x width`` image: the
        weights and buffers, plus :meth:`map_bytes_per_pixel` per padded pixel. An estimate, not
        a bound (the README compares it with measured peaks)."""
        m = self.pad_multiple
        pixels = -(-height // m) * m * (-(-width // m) * m)
        return int(module_bytes(self) + pixels * self.map_bytes_per_pixel())

    def update(self, scale_table: Optional[Tensor] = None, force: bool = False, update_quantiles: bool = False) -> bool:
        """CompressAI's ``update`` (the entropy coder's tables), then the latent codec's fixed-point networks
        (:meth:`_prepare_coding`): everything that coding needs, made once. Returns whether a table changed."""
        updated = super().update(scale_table, force=force, update_quantiles=update_quantiles)
        self._prepare_coding()
        return updated

    def _prepare_coding(self) -> None:
        """The latent codec's ``prepare`` where it has one
        (:meth:`gnn_lic.models.entropy.FixedPointHyperpriorCodec.prepare`)."""
        prepare = getattr(self.latent_codec, "prepare", None)
        if prepare is not None:
            prepare()

    @torch.no_grad()
    def compress(self, x: Tensor, quality: Optional[float] = None) -> Dict[str, Any]:
        """``{"strings", "shape"}``; a variable-rate model records the (scalar) ``quality`` in ``shape``.
        The latent codec is prepared before the analysis transform runs (:meth:`_prepare_coding`)."""
        self._prepare_coding()
        q = self._quality(quality)
        x_pad, hw = pad_to_multiple(x, self.pad_multiple)
        if q is None:
            out = super().compress(x_pad)
        else:
            q = float(q)
            out = self.latent_codec.compress(self.gain.scale(self.g_a(x_pad), q))
        shape = {"latent": to_jsonable(out["shape"]), "image": list(hw)}
        if q is not None:
            shape["quality"] = q
        return {"strings": out["strings"], "shape": shape}

    @torch.no_grad()
    def decompress(self, strings: List[Any], shape: Dict[str, Any]) -> Dict[str, Tensor]:
        if not isinstance(shape, dict) or "latent" not in shape or "image" not in shape:
            raise ValueError("shape must be the dict returned by compress: {'latent': ..., 'image': [H, W]}")
        q = self._quality(shape.get("quality"))
        if q is None:
            x_hat = super().decompress(strings, from_jsonable(shape["latent"]))["x_hat"]
        else:
            y_hat = self.latent_codec.decompress(strings, from_jsonable(shape["latent"]))["y_hat"]
            x_hat = self.g_s(self.gain.unscale(y_hat, q)).clamp_(0, 1)
        return {"x_hat": crop_to(x_hat, shape["image"])}


def _flat_arguments(signature: inspect.Signature, arguments: Mapping[str, Any]) -> Dict[str, Any]:
    """Bound constructor arguments without ``self``, ``**kwargs`` and dataclass options flattened."""
    args = dict(arguments)
    args.pop("self", None)
    for name, p in signature.parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            args.update(args.pop(name, {}))
    for name, value in list(args.items()):
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            clash = sorted(set(fields) & (set(args) - {name}))
            if clash:
                raise TypeError(f"options {name!r} repeat the arguments {clash}")
            del args[name]
            args.update(fields)
    for name, default in IDENTITY_NEUTRAL_ARGS.items():  # added later: at the default, no trace
        if name in args and args[name] == default:
            del args[name]
    return args
