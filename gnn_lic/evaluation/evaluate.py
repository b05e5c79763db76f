"""Rate-distortion evaluation of a learned codec on a set of images.

Two modes:

* **Real bitstream** (default): each image goes through the file codec
  (:func:`gnn_lic.codec.encode_image` / :func:`gnn_lic.codec.decode_image`). The rate
  is the real file size, header and checksum included: ``bpp = len(bytes) * 8 /
  (H * W)``; ``payload-bpp`` beside it counts the entropy-coded strings only (what
  the papers report; the container adds a few bytes, see :mod:`gnn_lic.codec.container`).
  PSNR and MS-SSIM are measured on the decoded 8-bit image.
* **Entropy estimation** (``entropy_estimation=True``): ``net(x)`` in eval mode with
  ``x`` the float ``(1, 3, H, W)`` image in ``[0, 1]``; ``bpp = sum over
  out["likelihoods"] of -log2(likelihood) / (H * W)``; metrics on
  ``out["x_hat"].clamp(0, 1)`` rounded to 8 bits. The models pad the image
  themselves (:func:`gnn_lic.models.base.pad_to_multiple`: replicate, bottom and right,
  to their ``pad_multiple``), so both modes code the same padded image; the
  reconstruction is cropped back and the rate is still divided by the original ``H * W``.
  ``pad_multiple`` pads first, for a model that does not pad itself.

Per-image values are averaged over the images (CompressAI's convention);
``ms-ssim-db`` of the result is ``-10*log10(1 - mean MS-SSIM)``.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Iterable

import numpy as np
import torch

from gnn_lic.models.base import crop_to, pad_to_multiple
from gnn_lic.utils import module_device

from .images import image_to_tensor
from .metrics import SmallImageWarning, likelihood_bits, ms_ssim, ms_ssim_db, psnr, to_uint8_array
from .metrics import bpp as _bpp
from .results import make_results

__all__ = ["evaluate_model", "evaluate_models", "load_codec"]

Codec = tuple[Callable[[Any, np.ndarray], bytes], Callable[[Any, bytes], np.ndarray]]


def load_codec() -> Codec:
    """``(encode_image, decode_image)`` from :mod:`gnn_lic.codec` (imported lazily)."""
    try:
        from gnn_lic.codec import decode_image, encode_image
    except ImportError as e:  # pragma: no cover - depends on the codec being present
        raise ImportError(
            "real-bitstream evaluation needs gnn_lic.codec.encode_image/decode_image; "
            "use entropy_estimation=True or pass codec=(encode, decode)"
        ) from e
    return encode_image, decode_image


def _estimate(net, image: np.ndarray, pad_multiple: int | None, quality: float | None = None
              ) -> tuple[float, np.ndarray, float]:
    x = image_to_tensor(image, module_device(net))
    h, w = image.shape[:2]
    if pad_multiple and pad_multiple > 1:
        x, _ = pad_to_multiple(x, pad_multiple)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = net(x) if quality is None else net(x, quality=quality)
    elapsed = time.perf_counter() - t0
    bits = float(likelihood_bits(out["likelihoods"]))
    x_hat = crop_to(out["x_hat"].clamp(0, 1), (h, w))
    rec = to_uint8_array(x_hat[0], data_range=1.0)
    return bits / (h * w), rec, elapsed


def evaluate_model(
    net: torch.nn.Module,
    images: Iterable[tuple[str, np.ndarray]],
    entropy_estimation: bool = False,
    codec: Codec | None = None,
    pad_multiple: int | None = None,
    ms_ssim_small: str = "reflect",
    quality: float | None = None,
) -> dict:
    """Evaluate ``net`` on ``(name, HxWx3 uint8)`` images; see the module docstring.

    ``codec`` overrides the file codec with ``(encode(net, img) -> bytes,
    decode(net, data) -> img)``. ``pad_multiple`` applies to entropy estimation only
    (the file codec pads by itself). ``quality`` selects the rate of a variable-rate
    model (:mod:`gnn_lic.models.variable_rate`). Returns::

        {"bpp", "payload-bpp", "psnr-rgb", "ms-ssim-rgb", "ms-ssim-db",   # averages over images
         "encoding_time", "decoding_time",                  # mean seconds per image
         "n_images", "mode",                                # "bitstream" / "entropy-estimation"
         "per_image": {name: {"bpp", "psnr-rgb", "ms-ssim-rgb", "bytes"?, ...}}}

    In entropy-estimation mode ``encoding_time`` is the forward time and
    ``decoding_time`` is None.
    """
    was_training = net.training
    net.eval()
    if not entropy_estimation and codec is None:
        codec = load_codec()
    per_image: dict[str, dict] = {}
    any_small = False
    try:
        for name, image in images:
            img = np.asarray(image)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"{name}: expected HxWx3 uint8, got {img.dtype} {img.shape}")
            h, w = img.shape[:2]
            row: dict[str, Any] = {}
            if entropy_estimation:
                rate, rec, t_enc = _estimate(net, img, pad_multiple, quality)
                row["encoding_time"] = t_enc
                row["decoding_time"] = None
            else:
                encode, decode = codec
                t0 = time.perf_counter()
                with torch.no_grad():
                    data = encode(net, img) if quality is None else encode(net, img, quality=quality)
                t1 = time.perf_counter()
                with torch.no_grad():
                    rec = decode(net, data)
                t2 = time.perf_counter()
                rec = to_uint8_array(rec)
                rate = _bpp(len(data), h, w)
                row["bytes"] = len(data)
                payload = _payload_bytes(data)
                if payload is not None:
                    row["payload_bytes"] = payload
                    row["payload-bpp"] = _bpp(payload, h, w)
                row["encoding_time"] = t1 - t0
                row["decoding_time"] = t2 - t1
            if rec.shape != img.shape:
                raise ValueError(f"{name}: decoded shape {rec.shape} != original {img.shape}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SmallImageWarning)
                m = ms_ssim(img, rec, data_range=255, small=ms_ssim_small)
            any_small |= min(h, w) < 161
            row.update({"bpp": rate, "psnr-rgb": psnr(img, rec, data_range=255), "ms-ssim-rgb": m})
            per_image[str(name)] = row
    finally:
        net.train(was_training)
    if not per_image:
        raise ValueError("no images to evaluate")
    if any_small and ms_ssim_small != "raise":
        warnings.warn(
            f"some images are smaller than 161 px: MS-SSIM handled with small={ms_ssim_small!r}",
            SmallImageWarning,
            stacklevel=2,
        )

    def mean(key):
        vals = [r[key] for r in per_image.values() if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    res = {
        "bpp": mean("bpp"),
        "payload-bpp": mean("payload-bpp"),
        "psnr-rgb": mean("psnr-rgb"),
        "ms-ssim-rgb": mean("ms-ssim-rgb"),
    }
    res["ms-ssim-db"] = (
        ms_ssim_db(res["ms-ssim-rgb"]) if res["ms-ssim-rgb"] is not None and not math.isnan(res["ms-ssim-rgb"]) else math.nan
    )
    res.update(
        encoding_time=mean("encoding_time"),
        decoding_time=mean("decoding_time"),
        n_images=len(per_image),
        mode="entropy-estimation" if entropy_estimation else "bitstream",
        per_image=per_image,
    )
    return res


def _payload_bytes(data: bytes) -> int | None:
    """Bytes of the entropy-coded strings of a ``.glic`` stream (None for other formats)."""
    try:
        from gnn_lic.codec.container import parse_stream  # noqa: PLC0415
        from gnn_lic.errors import CodecError  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the codec ships with the package
        return None
    try:
        return parse_stream(data).payload_bytes
    except (CodecError, TypeError):
        return None


def evaluate_models(
    nets: Iterable[tuple[Any, torch.nn.Module]],
    images: Iterable[tuple[str, np.ndarray]],
    name: str,
    description: str = "",
    **kwargs: Any,
) -> dict:
    """Evaluate one model per rate point and collect a results document.

    ``nets`` yields ``(label, net)`` (e.g. ``(quality, model)``); ``images`` is
    materialised once and reused; ``kwargs`` go to :func:`evaluate_model`. Points are
    sorted by bpp; ``results["label"]`` keeps each point's label.
    """
    images = list(images)
    points = []
    for label, net in nets:
        points.append((label, evaluate_model(net, images, **kwargs)))
    points.sort(key=lambda p: p[1]["bpp"])
    mode = points[0][1]["mode"] if points else ""
    return make_results(
        name=name,
        description=description or f"gnn_lic.evaluation ({mode}) on {len(images)} image(s)",
        bpp=[p[1]["bpp"] for p in points],
        psnr=[p[1]["psnr-rgb"] for p in points],
        ms_ssim=[p[1]["ms-ssim-rgb"] for p in points],
        label=[p[0] for p in points],
        **({"payload_bpp": [p[1]["payload-bpp"] for p in points]}
           if all(p[1].get("payload-bpp") is not None for p in points) else {}),
        encoding_time=[p[1]["encoding_time"] for p in points],
        decoding_time=[p[1]["decoding_time"] for p in points],
        per_image=[p[1]["per_image"] for p in points],
    )
