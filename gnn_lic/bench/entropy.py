"""Fixed-point vs float entropy parameters: encode and decode time side by side.

``python -m gnn_lic.bench.entropy --models glic gabic --size small --image kodim01.png``

For each model: the whole-image encode (``net.compress``) and decode
(``net.decompress``), and the latent codec alone (``latent_codec.compress`` /
``decompress`` on the same ``y``), with the fixed-point entropy parameters of
format-2 streams (:mod:`gnn_lic.models.fixed_point`: scheme w8, ``"fixed8"``, and scheme
fx16, ``"fixed"``) and with the float ones
(:func:`gnn_lic.models.entropy.entropy_arithmetic` ``"float"``, format 1).
The paths alternate within one process, round after round with each path first in
turn, and the medians are compared: on a shared host only figures measured side
by side compare. With one thread the clock is the process CPU time, which other
processes disturb less than wall time; with more, wall time.

The shipped weights are used (``--checkpoint`` for others, ``--random-init`` for a
smoke run without any); the image is ``--image`` or a smooth synthetic one.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from gnn_lic.cli import ArgumentParser, UsageError, run_main

__all__ = ["time_paths", "bench_entropy", "build_parser", "main"]

#: scheme w8 (integer products), scheme fx16 (float64 products), the float networks
PATHS = ("fixed8", "fixed", "float")
STEPS = ("encode", "decode", "latent_encode", "latent_decode")


def synthetic_image(height: int, width: int) -> np.ndarray:
    """A smooth RGB image from a fixed formula (uint8, ``(H, W, 3)``), no random generator."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 90 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 20 * np.sin((xx - yy) / 5.0)
    g = 100 + 80 * np.cos((xx + 2 * yy) / 51.0)
    b = 150 + 60 * np.sin(xx / 13.0 + yy / 29.0)
    return np.clip(np.stack([r, g, b], -1).round(), 0, 255).astype(np.uint8)


def _image(path: Optional[str], height: int, width: int) -> torch.Tensor:
    if path is None:
        arr = synthetic_image(height, width)
    else:
        from gnn_lic.codec.image_io import read_image  # noqa: PLC0415

        arr = read_image(path)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0).float().div(255.0)


def _load(name: str, size: str, checkpoint: Optional[str], random_init: bool) -> torch.nn.Module:
    if checkpoint:
        from gnn_lic.models.checkpoint import load_checkpoint  # noqa: PLC0415

        net, _ = load_checkpoint(checkpoint)
    else:
        from gnn_lic.models import create_model  # noqa: PLC0415

        torch.manual_seed(0)
        net = create_model(name, size=size, pretrained=not random_init)
        if random_init:
            net.update(force=True)
    return net.eval()


def _payload(strings) -> int:
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    return sum(_payload(s) for s in strings)


def time_paths(net: torch.nn.Module, x: torch.Tensor, rounds: int, clock: Callable[[], float]) -> Dict:
    """Median seconds of every step on both paths (``{step: {path: s}}``), payload bytes,
    and whether the fixed path's decoded latents equal the encoder's bit for bit."""
    from gnn_lic.models.entropy import entropy_arithmetic, supports_fixed_point  # noqa: PLC0415

    if not supports_fixed_point(net):
        raise UsageError(f"{type(net).__name__} has no fixed-point entropy path")
    times: Dict[str, Dict[str, List[float]]] = {s: {p: [] for p in PATHS} for s in STEPS}
    payload: Dict[str, int] = {}
    exact = True
    from gnn_lic.models.base import pad_to_multiple  # noqa: PLC0415

    with torch.inference_mode():
        y = net.g_a(pad_to_multiple(x, int(getattr(net, "pad_multiple", 64)))[0])  # the latent compress codes
        for r in range(rounds + 1):  # round 0 warms up (conversion to fixed point, caches)
            for path in PATHS[r % len(PATHS):] + PATHS[: r % len(PATHS)]:  # each path first in turn
                with entropy_arithmetic(net, path):
                    t0 = clock()
                    enc = net.compress(x)
                    t1 = clock()
                    net.decompress(enc["strings"], enc["shape"])
                    t2 = clock()
                    lat = net.latent_codec.compress(y)
                    t3 = clock()
                    dec = net.latent_codec.decompress(lat["strings"], lat["shape"])
                    t4 = clock()
                if r:
                    for step, dt in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                        times[step][path].append(dt)
                payload[path] = _payload(enc["strings"])
                if path != "float":
                    exact = exact and torch.equal(dec["y_hat"], lat["y_hat"])
    medians = {s: {p: statistics.median(v) for p, v in d.items()} for s, d in times.items()}
    return {"seconds": medians, "payload_bytes": payload, "fixed_latents_exact": exact}


def _row(step: str, t: Dict[str, float]) -> str:
    cells = " ".join(f"{t[p]:9.3f} s" for p in PATHS)
    ratios = "  ".join(f"{100 * (t[p] / t['float'] - 1):+6.1f} %" for p in PATHS[:-1])
    return f"  {step:14} {cells}   {ratios}"


def bench_entropy(models: List[str], size: str, image: Optional[str], height: int, width: int, rounds: int,
                  threads: Optional[int], clock_name: str, checkpoint: Optional[str] = None,
                  random_init: bool = False) -> List[Dict]:
    """Time both paths for every model and print a table per model; returns the figures."""
    if threads:
        torch.set_num_threads(threads)
    n = torch.get_num_threads()
    use_cpu = clock_name == "cpu" or (clock_name == "auto" and n == 1)
    clock = time.process_time if use_cpu else time.perf_counter
    x = _image(image, height, width)
    label = os.path.basename(image) if image else "synthetic"
    rows = []
    for name in models:
        net = _load(name, size, checkpoint, random_init)
        r = time_paths(net, x, rounds, clock)
        r.update(model=f"{name}-{size}" if not checkpoint else os.path.basename(checkpoint), image=label,
                 pixels=[int(x.shape[-2]), int(x.shape[-1])], threads=n, clock="cpu" if use_cpu else "wall",
                 rounds=rounds)
        rows.append(r)
        print(f"{r['model']}: {label} {x.shape[-1]}x{x.shape[-2]}, {n} thread(s), {r['clock']} time, "
              f"median of {rounds} alternating rounds")
        print(f"  {'':14} {'w8':>11} {'fx16':>11} {'float':>11}   w8 / fx16 vs float")
        for step in STEPS:
            print(_row(step.replace("_", " "), r["seconds"][step]))
        b = r["payload_bytes"]
        print(f"  payload bytes: w8 {b['fixed8']:,}, fx16 {b['fixed']:,}, float {b['float']:,}; "
              f"fixed-point latents decode bit-exactly: {'yes' if r['fixed_latents_exact'] else 'NO'}", flush=True)
    return rows


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m gnn_lic.bench.entropy", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["glic", "gabic"])
    p.add_argument("--size", default="small", help="model size (default: small, the shipped weights)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint instead of the shipped weights (one model)")
    p.add_argument("--random-init", action="store_true", help="seeded untrained weights (a smoke run)")
    p.add_argument("--image", default=None, help="image file (default: a smooth synthetic image)")
    p.add_argument("--height", type=int, default=512, help="synthetic image height")
    p.add_argument("--width", type=int, default=768, help="synthetic image width")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per path after one warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="auto: process CPU time with one thread, wall time with more")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p


def _run(argv: Optional[List[str]]) -> int:
    args = build_parser().parse_args(argv)
    from gnn_lic.models import SIZES, list_models  # noqa: PLC0415
    from gnn_lic.utils import tune_malloc  # noqa: PLC0415

    for name in args.models:
        if name not in list_models():
            raise UsageError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    if args.size not in SIZES:
        raise UsageError(f"unknown size '{args.size}'; choose one of: {', '.join(SIZES)}")
    if args.checkpoint and (len(args.models) != 1 or not os.path.isfile(args.checkpoint)):
        raise UsageError("--checkpoint needs one existing checkpoint file and one --models entry")
    if args.image and not os.path.isfile(args.image):
        raise UsageError(f"--image: '{args.image}' is not a file")
    for flag, value in (("--rounds", args.rounds), ("--threads", args.threads), ("--height", args.height),
                        ("--width", args.width)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    tune_malloc()
    rows = bench_entropy(args.models, args.size, args.image, args.height, args.width, args.rounds, args.threads,
                         args.clock, args.checkpoint, args.random_init)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; bad arguments print one line and return 2 (:mod:`gnn_lic.cli`)."""
    from gnn_lic.errors import CodecError  # noqa: PLC0415

    return run_main(lambda: _run(argv), "python -m gnn_lic.bench.entropy", expected=(CodecError,))


if __name__ == "__main__":
    sys.exit(main())
