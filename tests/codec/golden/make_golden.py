"""Regenerate the golden files of ``test_codec_golden.py`` (only for an intended format change).

``python tests/codec/golden/make_golden.py`` writes, per model (``glic``/``gabic`` at size
``tiny``): a checkpoint with seeded weights whose analysis outputs are scaled up (so the
latents are not all zero) and, per fixed-point scheme (:data:`SCHEMES`: fx16 without a
suffix, w8 with ``-w8``), the ``.glic`` stream of a 48x80 synthetic image, the decoded
latents (``.npy``) and the decoded pixels (``.png``). ``--streams w8`` writes only the
streams of that scheme from the committed checkpoints.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gnn_lic.codec import decode_image, encode_image
from gnn_lic.models import create_model
from gnn_lic.models.checkpoint import export_checkpoint, load_checkpoint, save_checkpoint

HERE = Path(__file__).resolve().parent
#: narrower than the "tiny" presets, to keep the committed checkpoints small
OPTIONS = {
    "glic": dict(channels=(8, 8, 8, 16), groups=(1, 1, 2, 4, 8), hyper_channels=8, side_channels=16,
                 ctx_min_channels=8, param_min_channels=16),
    "gabic": dict(N=8, M=16, cc_hidden=(8, 8, 8, 8)),
}


def golden_image() -> np.ndarray:
    """A smooth 48x80 RGB test image from a fixed formula (no random generator involved)."""
    yy, xx = np.mgrid[0:48, 0:80].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)
    g = 60 + 2.2 * xx + 0.5 * yy
    b = 200 - 3.0 * yy + 20 * np.sin((xx + yy) / 5.0)
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255).astype(np.uint8)


#: file-name suffix -> the entropy arithmetic (fixed-point scheme) of the golden stream
SCHEMES = {"": "fixed", "-w8": "fixed8"}


def latents(net, data: bytes) -> np.ndarray:
    """The latents the stream decodes to, in the stream's own fixed-point scheme."""
    from gnn_lic.codec.container import parse_stream, stream_arithmetic
    from gnn_lic.codec.image_codec import implied_shape
    from gnn_lic.models.base import from_jsonable
    from gnn_lic.models.entropy import entropy_arithmetic

    p = parse_stream(data)
    shape = implied_shape(net, p.height, p.width)
    with torch.inference_mode(), entropy_arithmetic(net, stream_arithmetic(p)):
        return net.latent_codec.decompress(p.strings, from_jsonable(shape["latent"]))["y_hat"].numpy()


def write_streams(name: str, net, suffix: str) -> None:
    from gnn_lic.models.entropy import entropy_arithmetic

    with entropy_arithmetic(net, SCHEMES[suffix]):
        data = encode_image(net, golden_image())
    (HERE / f"{name}-tiny{suffix}.glic").write_bytes(data)
    np.save(HERE / f"{name}-tiny{suffix}.latents.npy", latents(net, data))
    Image.fromarray(decode_image(net, data)).save(HERE / f"{name}-tiny{suffix}.png")


def main(streams_only: str = "") -> None:
    for name in ("glic", "gabic"):
        if not streams_only:
            torch.manual_seed(0)
            net = create_model(name, size="tiny", **OPTIONS[name])
            with torch.no_grad():
                last = net.g_a.down[3] if name == "glic" else net.g_a[7]  # the conv that makes y
                last.weight.mul_(30.0)
                last.bias.mul_(30.0)
            tmp = HERE / f"{name}-tiny.full.pt"
            save_checkpoint(tmp, net)
            export_checkpoint(tmp, HERE / f"{name}-tiny.pt", half=True)
            tmp.unlink()
        net, _ = load_checkpoint(HERE / f"{name}-tiny.pt")
        for suffix in SCHEMES:
            if not streams_only or suffix == f"-{streams_only}":
                write_streams(name, net, suffix)


if __name__ == "__main__":
    import sys

    main(sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--streams" else "")
