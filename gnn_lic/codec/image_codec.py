"""Encode an RGB image to a ``.glic`` stream with a model, and decode it back.

The model follows the CompressAI contract (``compress(x) -> {"strings", "shape"}``,
``decompress(strings, shape) -> {"x_hat"}``) and carries ``model_name``, ``model_size``
and ``model_config`` (set by :func:`gnn_lic.models.create_model`).  The stream records
the model identity and the original image size (see :mod:`gnn_lic.codec.container`);
decoding validates the whole stream and checks that the given model is the one used for
encoding before anything reaches the entropy decoder.

Streams are written in format 2: models with the fixed-point entropy path
(:func:`gnn_lic.models.entropy.supports_fixed_point`) code with it, so the decoded latents
are the same on every machine, thread count and dtype. Format-1 streams (float entropy
parameters) still decode, through the float path, with a notice on stderr: they decode
correctly only where the float networks give the encoder's numbers.

Every failure of decoding is a :class:`~gnn_lic.errors.CodecError`: a stream whose
checksum is valid but whose content the model cannot decode (crafted or recomputed CRC)
raises :class:`~gnn_lic.errors.CorruptStreamError`, and a declared image larger
than :func:`max_pixels` is refused before anything is allocated.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from gnn_lic.codec.container import (
    IDENTITY_BYTES,
    QUALITY_STEPS,
    pack_stream,
    parse_stream,
    quality_code,
    stream_arithmetic,
)
from gnn_lic.codec.container_v1 import HASH_BYTES
from gnn_lic.codec.header import MAX_IMAGE_SIDE
from gnn_lic.errors import CodecError, CorruptStreamError, ModelMismatchError
from gnn_lic.codec.fingerprint import config_hash, identity_digest, model_fingerprint
from gnn_lic.utils import module_device

__all__ = ["encode_image", "decode_image", "model_identity", "implied_shape", "max_pixels", "MAX_PIXELS_ENV"]

#: environment variable overriding :data:`DEFAULT_MAX_PIXELS`
MAX_PIXELS_ENV = "GNN_LIC_MAX_PIXELS"
#: largest image (height x width) decoded unless the environment allows more (64 Mpixel)
DEFAULT_MAX_PIXELS = 1 << 26


def max_pixels() -> int:
    """The decoder's limit on the padded image area: ``$GNN_LIC_MAX_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise CodecError(f"{MAX_PIXELS_ENV}={raw!r} is not an integer") from None
    if value < 1:
        raise CodecError(f"{MAX_PIXELS_ENV} must be positive, got {value}")
    return value


def _arithmetic_of(net: torch.nn.Module) -> str:
    """The entropy arithmetic ``net`` codes with right now (``"float"`` without a fixed-point path)."""
    from gnn_lic.models.entropy import supports_fixed_point  # noqa: PLC0415

    return getattr(net.latent_codec, "arithmetic", "float") if supports_fixed_point(net) else "float"


def _entropy_label(arithmetic: str) -> str:
    """The arithmetic's name in the model identity: the fixed-point scheme, or ``"float"``."""
    from gnn_lic.models.fixed_point import SCHEMES  # noqa: PLC0415

    return SCHEMES.get(arithmetic, "float")


def implied_shape(net: torch.nn.Module, height: int, width: int) -> Optional[Dict[str, Any]]:
    """The ``shape`` that ``net.compress`` returns on the fixed-point path for an image of this size.

    For the GLIC/GABIC codecs: ``{"latent": [h_z, w_z], "image": [H, W]}`` with
    ``h_z = ceil(H / m) * m / 64`` (``m = pad_multiple``); None for models without the
    fixed-point path.
    """
    from gnn_lic.models.entropy import supports_fixed_point  # noqa: PLC0415

    if not supports_fixed_point(net):
        return None
    m = int(getattr(net, "pad_multiple", 64))
    if m % 64:
        return None
    hz = math.ceil(height / m) * m // 64
    wz = math.ceil(width / m) * m // 64
    return {"latent": [hz, wz], "image": [int(height), int(width)]}


def model_identity(net: torch.nn.Module) -> Tuple[str, str, bytes, bytes]:
    """(name, size, 16-byte config hash, 16-byte weights hash) as stored in a stream."""
    name = getattr(net, "model_name", None)
    size = getattr(net, "model_size", None)
    if not isinstance(name, str) or not isinstance(size, str):
        raise CodecError(
            "the model has no 'model_name'/'model_size'; build it with gnn_lic.models.create_model "
            "or load it with gnn_lic.models.checkpoint.load_checkpoint"
        )
    cfg = bytes.fromhex(config_hash(net))[:HASH_BYTES]
    weights = bytes.fromhex(model_fingerprint(net))[:HASH_BYTES]
    return name, size, cfg, weights


def _check_updated(net: torch.nn.Module) -> None:
    try:
        from compressai.entropy_models import EntropyModel  # noqa: PLC0415
    except ImportError:  # pragma: no cover - compressai is a dependency
        return
    for name, module in net.named_modules():
        if isinstance(module, EntropyModel):
            offset = getattr(module, "_offset", None)
            if offset is None or offset.numel() == 0:
                raise CodecError(
                    f"entropy model '{name}' has no CDF tables; call net.update(force=True) before coding"
                )


@contextlib.contextmanager
def _eval_mode(net: torch.nn.Module) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        if was_training:
            net.train()


def _check_image(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise CodecError(f"expected a uint8 image array of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise CodecError(f"image size {w}x{h} is outside 1..{MAX_IMAGE_SIDE} per side")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = np.array(arr, copy=True, order="C")  # torch.from_numpy wants a writable array
    return arr


def _same_shape(a: Any, b: Any) -> bool:
    from gnn_lic.models.base import to_jsonable  # noqa: PLC0415

    try:
        return to_jsonable(a) == to_jsonable(b)
    except (TypeError, ValueError):
        return False


def _stream_quality(net: torch.nn.Module, quality: Optional[float]) -> Optional[float]:
    """The quality to code at (on the stream's 1/256 grid), None for a single-rate model."""
    levels = int(getattr(net, "qualities", 1))
    if getattr(net, "gain_units", None) is None:
        if quality is not None:
            raise CodecError(f"model '{getattr(net, 'model_name', '?')}' serves one rate; --quality is for "
                             "variable-rate models")
        return None
    if quality is None:
        quality = getattr(net, "default_quality", None) or levels
    q = quality
    code = quality_code(q)
    if code > levels * QUALITY_STEPS:
        raise CodecError(f"quality must be a number in [1, {levels}] for this model, got {quality!r}")
    return code / QUALITY_STEPS


def encode_image(net: torch.nn.Module, image: np.ndarray, quality: Optional[float] = None) -> bytes:
    """Compress a uint8 (H, W, 3) RGB array to the bytes of a format-2 ``.glic`` stream.

    The model must have been updated (``net.update(force=True)``); it is run in eval mode
    under ``torch.inference_mode()`` (its previous train/eval mode is restored).
    ``quality`` (1 to the model's number of levels, any real number in between; default:
    the model's ``default_quality``, else its top level) selects the rate of a variable-rate model and is stored in the stream,
    rounded to 1/256.
    """
    arr = _check_image(image)
    height, width = arr.shape[:2]
    name, size, _, _ = model_identity(net)
    arithmetic = _arithmetic_of(net)
    fixed = arithmetic != "float"
    identity = identity_digest(net, _entropy_label(arithmetic))
    _check_updated(net)
    x = torch.from_numpy(arr).to(module_device(net)).permute(2, 0, 1).unsqueeze(0).float().div(255.0)
    q = _stream_quality(net, quality)
    with _eval_mode(net), torch.inference_mode():
        out = net.compress(x) if q is None else net.compress(x, quality=q)
    if not isinstance(out, dict) or "strings" not in out or "shape" not in out:
        raise CodecError("net.compress must return a dict with 'strings' and 'shape'")
    shape = out["shape"]
    if q is not None and isinstance(shape, dict):  # the quality has its own header field
        shape = {k: v for k, v in shape.items() if k != "quality"}
    if fixed and _same_shape(shape, implied_shape(net, height, width)):
        shape = None
    return pack_stream(
        model_name=name,
        model_size=size,
        identity=identity,
        fixed_point=fixed,
        w8=arithmetic == "fixed8",
        height=height,
        width=width,
        shape=shape,
        strings=out["strings"],
        quality=q,
    )


def check_model_matches(net: torch.nn.Module, parsed: Any) -> None:
    """Raise :class:`ModelMismatchError` saying what differs between ``net`` and the stream."""
    name, size, _, _ = model_identity(net)
    if parsed.model_name != name:
        raise ModelMismatchError(
            f"the stream was encoded with model '{parsed.model_name}', not '{name}'"
        )
    if parsed.model_size != size:
        raise ModelMismatchError(
            f"the stream was encoded with model '{name}' size '{parsed.model_size}', not size '{size}'"
        )
    if parsed.version >= 2:
        from gnn_lic.models.entropy import supports_fixed_point  # noqa: PLC0415

        if parsed.fixed_point and not supports_fixed_point(net):
            raise ModelMismatchError("the stream needs fixed-point entropy parameters, which this model lacks")
        label = _entropy_label(stream_arithmetic(parsed))
        identity = identity_digest(net, label)[:IDENTITY_BYTES]
        if parsed.identity != identity and not _earlier_layout_matches(
                net, parsed.identity, lambda state: identity_digest(net, label, state=state)):
            raise ModelMismatchError(
                f"the model configuration or weights differ from the ones used for encoding "
                f"(stream identity {parsed.identity.hex()}, model {identity.hex()}); decode with the same checkpoint"
            )
        return
    cfg_hash = bytes.fromhex(config_hash(net))[:HASH_BYTES]
    weights_hash = bytes.fromhex(model_fingerprint(net))[:HASH_BYTES]
    if parsed.config_hash != cfg_hash:
        raise ModelMismatchError(
            f"the model configuration differs from the one used for encoding "
            f"(stream config hash {parsed.config_hash.hex()}, model {cfg_hash.hex()})"
        )
    if parsed.weights_hash != weights_hash and not _earlier_layout_matches(
            net, parsed.weights_hash, lambda state: bytes.fromhex(model_fingerprint(net, state=state))):
        raise ModelMismatchError(
            f"the model weights differ from the ones used for encoding "
            f"(stream weights hash {parsed.weights_hash.hex()}, model {weights_hash.hex()}); "
            "decode with the same checkpoint"
        )


def _earlier_layout_matches(net: torch.nn.Module, stored: bytes, digest) -> bool:
    """Whether ``stored`` is ``digest(state)`` of ``net``'s weights under the keys of an earlier
    module layout: a stream encoded before a module of the model was renamed
    (:func:`gnn_lic.models.base.earlier_state_dict`)."""
    from gnn_lic.models.base import earlier_state_dict  # noqa: PLC0415

    state = earlier_state_dict(net)
    return state is not None and digest(state)[: len(stored)] == stored


def decode_image(net: torch.nn.Module, data: bytes) -> np.ndarray:
    """Decode the bytes of a ``.glic`` stream to a uint8 (H, W, 3) RGB array.

    Raises :class:`CorruptStreamError` for an invalid stream and
    :class:`ModelMismatchError` when ``net`` is not the model the stream was encoded with;
    both are checked before the model is used.
    """
    parsed = parse_stream(data)
    check_model_matches(net, parsed)
    _check_updated(net)
    h, w = parsed.height, parsed.width
    limit = max_pixels()
    m = int(getattr(net, "pad_multiple", 1) or 1)
    padded = math.ceil(h / m) * m * math.ceil(w / m) * m  # what the transforms will allocate
    if padded > limit:
        raise CorruptStreamError(f"the stream declares a {w}x{h} image ({padded} pixels padded), above the decoder "
                                 f"limit of {limit} (raise {MAX_PIXELS_ENV} to decode it)")
    shape = parsed.shape
    if parsed.version >= 2 and parsed.fixed_point:
        # the model implies the shape from the (bounded) image size; an encoder never stores
        # another one, so a stored shape that differs is corrupt (and could be any size)
        implied = implied_shape(net, h, w)
        if not parsed.shape_implied and not _same_shape(shape, implied):
            raise CorruptStreamError("the stream's shape does not match its image size")
        shape = implied
    elif parsed.version >= 2 and parsed.shape_implied:
        raise CorruptStreamError("the stream leaves its shape to the model, which does not imply one")
    if getattr(net, "gain_units", None) is not None:  # a variable-rate model decodes at the stream's quality
        if parsed.quality is None or not 1 <= parsed.quality <= net.qualities:
            raise CorruptStreamError(
                f"the stream's quality {parsed.quality} is not one of this model's (1..{net.qualities})")
        shape = {**shape, "quality": parsed.quality}
    elif parsed.quality is not None:
        raise CorruptStreamError("the stream has a quality, but the model serves one rate")
    arithmetic = stream_arithmetic(parsed)
    if parsed.version == 1:
        print("notice: format-1 stream: its entropy parameters come from float networks, so it decodes "
              "correctly only where they give the encoder's numbers (re-encode to get format 2)", file=sys.stderr)
    with _eval_mode(net), torch.inference_mode(), _arithmetic(net, arithmetic):
        try:
            out = net.decompress(parsed.strings, shape)
        except CodecError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, RuntimeError, AssertionError, OverflowError) as exc:
            detail = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise CorruptStreamError(f"the stream passed its checks but does not decode: {detail}") from None
        x_hat = out.get("x_hat") if isinstance(out, dict) else None
        if not isinstance(x_hat, torch.Tensor) or x_hat.dim() != 4 or x_hat.shape[0] != 1 or x_hat.shape[1] != 3:
            got = tuple(x_hat.shape) if isinstance(x_hat, torch.Tensor) else type(x_hat).__name__
            raise CodecError(f"net.decompress must return 'x_hat' of shape (1, 3, H, W), got {got}")
        if x_hat.shape[2] < h or x_hat.shape[3] < w:
            raise CodecError(
                f"the model reconstructed {x_hat.shape[3]}x{x_hat.shape[2]} pixels, "
                f"smaller than the stored image size {w}x{h}"
            )
        img = x_hat[0, :, :h, :w].float()
        img = torch.nan_to_num(img, nan=0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
        arr = img.permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(arr)


@contextlib.contextmanager
def _arithmetic(net: torch.nn.Module, mode: str) -> Iterator[None]:
    from gnn_lic.models.entropy import entropy_arithmetic, supports_fixed_point  # noqa: PLC0415

    if not supports_fixed_point(net):
        yield
        return
    with entropy_arithmetic(net, mode):
        yield
