"""Whole models: ``python -m gnn_lic.bench codec``.

``codec`` measures whole models on one image (default: a 768x512 noise image, or
``--image FILE``): eval forward, encode and decode time (real bitstreams through
:mod:`gnn_lic.codec`), the share of the forward spent building graphs, peak memory
(process high-water mark), and one training step (2 crops of 256x256 for the paper
models; the best of ``--runs`` steps after warm-up steps that end once a step touches no fresh
memory, :data:`TRAIN_WARMUP`) with its peak memory, in a process that only trains. Given a
checkout of the authors' code (``--authors-glic DIR``, ``--authors-gabic DIR``), their paper models
run the same steps in alternating fresh processes (``--rounds``), and the ratios of the best figures
are printed: a host's speed drifts, so only figures measured side by side compare. Our encode and
decode are also timed with the float entropy networks (``encode_float_s``, ``decode_float_s``): that
is the authors' work, while the default fixed-point path adds the cost of portable streams.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from gnn_lic.bench.runner import run_child
from gnn_lic.evaluation.complexity import process_memory, reset_peak_memory

__all__ = ["bench_codec", "CHILD_TASKS", "parse_image_size", "loglog_slope", "DEFAULT_IMAGE_SIZE"]


#: the default image size (width x height) of the benchmark
DEFAULT_IMAGE_SIZE = "768x512"
#: fewest and most warm-up training steps before the timed ones: warm-up ends at the first step, from the
#: fewest on, with fewer than :data:`STEADY_FAULTS` minor page faults (steady state: memory reused)
TRAIN_WARMUP = (2, 6)
#: minor page faults (4 KiB pages) of a training step that count as touching no fresh memory
STEADY_FAULTS = 1024


def parse_image_size(text: str) -> Tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``.

    >>> parse_image_size("768x512")
    (768, 512)
    """
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise ValueError(f"image size must be WIDTHxHEIGHT, got {text!r}")
    return int(w), int(h)


def _bench_image(image: Optional[str], size: Optional[str] = None):
    """The image file ``image``, else noise of ``size`` (``"WxH"``, default :data:`DEFAULT_IMAGE_SIZE`)."""
    import numpy as np  # noqa: PLC0415

    from gnn_lic.codec.image_io import read_image  # noqa: PLC0415

    if image:
        return read_image(image)
    w, h = parse_image_size(size or DEFAULT_IMAGE_SIZE)
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def loglog_slope(pixels: Sequence[float], seconds: Sequence[float]) -> float:
    r"""Least-squares slope of :math:`\log t` against :math:`\log p` (1: time linear in the pixels).

    >>> round(loglog_slope([1e5, 4e5, 1.6e6], [1.0, 4.0, 16.0]), 6)
    1.0
    """
    xs, ys = [math.log(p) for p in pixels], [math.log(t) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _time_codec(net, img, runs: int, encode, decode, graph_time: Optional[List[float]] = None) -> Dict:
    """Forward, encode and decode (each the best of ``runs`` after a warm-up) and peak RSS of ``net``."""
    from gnn_lic.evaluation.images import image_to_tensor  # noqa: PLC0415

    x = image_to_tensor(img)
    base = process_memory("VmRSS")
    with torch.no_grad():
        fwd, share = [], []
        for _ in range(runs + 1):
            if graph_time is not None:
                graph_time[0] = 0.0
            t = time.perf_counter()
            net(x)
            fwd.append(time.perf_counter() - t)
            share.append(graph_time[0] / fwd[-1] if graph_time is not None else float("nan"))
    enc, dec = [], []
    for _ in range(runs + 1):  # the first round warms up (our fixed-point networks are converted there)
        t = time.perf_counter()
        blob, nbytes = encode(img)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode(blob)
        dec.append(time.perf_counter() - t)
    r = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6, "image": f"{img.shape[1]}x{img.shape[0]}",
         "forward_s": min(fwd[1:]), "first_forward_s": fwd[0], "graph_share": share[-1],
         "encode_s": min(enc[1:]), "decode_s": min(dec[1:]),
         "first_encode_s": enc[0], "first_decode_s": dec[0], "bpp": 8 * nbytes / (img.shape[0] * img.shape[1]),
         "peak_gb": process_memory("VmHWM") / 1e9, "baseline_gb": base / 1e9}
    return r


def _time_train(net, runs: int, train_batch: int, train_patch: int, optimizer=None) -> Dict:
    """The best of ``runs`` training steps of ``net`` on noise crops after warm-up steps, and the peak RSS of the
    process, which does nothing else (a training job's memory, not what an evaluation left in the heap).

    ``optimizer(net)`` builds the training step's optimizer, as the code under test trains with it
    (default: ``torch.optim.Adam`` over every parameter, as the authors' scripts build it)."""
    from gnn_lic.training import RateDistortionLoss  # noqa: PLC0415

    net.train()
    crit = RateDistortionLoss(lmbda=0.013)
    opt = torch.optim.Adam(net.parameters(), 1e-5) if optimizer is None else optimizer(net)
    xs = torch.rand(train_batch, 3, train_patch, train_patch)
    reset_peak_memory()

    def step() -> Tuple[float, int]:
        faults, t = _minor_faults(), time.perf_counter()
        opt.zero_grad(set_to_none=True)  # as the training loop: no gradients held through the forward
        out = net(xs)
        loss = crit(out, xs)["loss"]
        loss.backward()
        opt.step()
        return time.perf_counter() - t, _minor_faults() - faults

    # warm-up (memory, backward primitives, optimiser state): until a step touches no fresh memory
    warmup = 0
    while warmup < TRAIN_WARMUP[1]:
        warmup += 1
        if step()[1] < STEADY_FAULTS and warmup >= TRAIN_WARMUP[0]:
            break
    timed = [step() for _ in range(runs)]
    return {"train_step_s": min(t for t, _ in timed), "train_batch": f"{train_batch}x{train_patch}x{train_patch}",
            "train_peak_gb": process_memory("VmHWM") / 1e9, "train_warmup_steps": warmup,
            "train_faults": max(f for _, f in timed)}


def _minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing)."""
    try:
        import resource  # noqa: PLC0415
    except ImportError:  # Windows has no resource module
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _codec_one(name: str, size: str, image: Optional[str], runs: int, image_size: Optional[str] = None) -> Dict:
    """Our model's forward, encode and decode (:func:`_time_codec`), with the float entropy path's too."""
    from gnn_lic.codec import decode_image, encode_image  # noqa: PLC0415
    from gnn_lic.models import create_model  # noqa: PLC0415
    from gnn_lic.nn import blocks  # noqa: PLC0415

    torch.manual_seed(0)
    img = _bench_image(image, image_size)
    net = create_model(name, size=size).eval()
    net.update(force=True)
    graph_time = [0.0]
    real_build = blocks.build_graphs

    def timed_build(*a, **k):
        t = time.perf_counter()
        out = real_build(*a, **k)
        graph_time[0] += time.perf_counter() - t
        return out

    def encode(im):
        blob = encode_image(net, im)
        return blob, len(blob)

    blocks.build_graphs = timed_build  # every graph of GFABlock and GraphWindowBlock goes through it
    try:
        r = _time_codec(net, img, runs, encode, lambda blob: decode_image(net, blob), graph_time)
    finally:
        blocks.build_graphs = real_build
    r.update(_time_float_entropy(net, img, runs))
    return {"model": name, "size": size, **r}


def _time_float_entropy(net, img, runs: int) -> Dict[str, float]:
    """Encode and decode with the float entropy networks (format 1: the authors' work, not portable),
    best of ``runs`` after a warm-up; empty for a model without the fixed-point path."""
    from gnn_lic.codec import decode_image, encode_image  # noqa: PLC0415
    from gnn_lic.models.entropy import entropy_arithmetic, supports_fixed_point  # noqa: PLC0415

    if not supports_fixed_point(net):
        return {}
    enc, dec = [], []
    with entropy_arithmetic(net, "float"):
        for _ in range(runs + 1):
            t = time.perf_counter()
            blob = encode_image(net, img)
            enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            decode_image(net, blob)
            dec.append(time.perf_counter() - t)
    return {"encode_float_s": min(enc[1:]), "decode_float_s": min(dec[1:])}


def _authors_model(name: str, code: str):
    """The authors' paper model from their own checkout ``code`` (GLIC: the repository root with
    ``glic_model``; GABIC: the repository root, whose ``src`` holds the ``comp`` package)."""
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    if name == "glic":
        sys.path.insert(0, code)
        from glic_model import GLICModel  # noqa: PLC0415

        return GLICModel()
    sys.path.insert(0, os.path.join(code, "src"))
    from comp.models import WinGraph_WA  # noqa: PLC0415

    with contextlib.redirect_stdout(io.StringIO()):  # their constructor prints its settings
        return WinGraph_WA(knn=9, graph_conv="transf_custom", heads=8, use_edge_attr=True, dissimilarity=False)


def _train_one(name: str, size: str, runs: int, train_batch: int, train_patch: int) -> Dict:
    """Our model's training step in a process of its own (:func:`_time_train`), with the main optimizer of our
    training loop (fused Adam; the aux one, which the step does not use, left out)."""
    from gnn_lic.models import create_model  # noqa: PLC0415
    from gnn_lic.training.optim import configure_optimizers  # noqa: PLC0415

    torch.manual_seed(0)
    net = create_model(name, size=size)
    return _time_train(net, runs, train_batch, train_patch, optimizer=lambda m: configure_optimizers(m, lr=1e-5)[0])


def _train_authors(name: str, code: str, runs: int, train_batch: int, train_patch: int) -> Dict:
    """The authors' paper model's training step in a process of its own (their scripts' Adam)."""
    torch.manual_seed(0)
    return _time_train(_authors_model(name, code), runs, train_batch, train_patch)


def _codec_authors(name: str, code: str, image: Optional[str], runs: int, image_size: Optional[str] = None) -> Dict:
    """:func:`_codec_one` for the authors' model (their forward, compress and decompress)."""
    from gnn_lic.evaluation.images import image_to_tensor  # noqa: PLC0415

    torch.manual_seed(0)
    img = _bench_image(image, image_size)
    net = _authors_model(name, code).eval()
    net.update(force=True)

    def encode(im):
        with torch.no_grad():
            out = net.compress(image_to_tensor(im))
        return out, sum(len(s[0]) for s in out["strings"])

    def decode(out):
        with torch.no_grad():
            return net.decompress(out["strings"], out["shape"])

    r = _time_codec(net, img, runs, encode, decode)
    return {"model": name, "size": "authors", **r}


def _codec_row(r: Dict) -> str:
    return (f"{r['model']:6} {r['size']:7} {r['image']:>9} {r['params_M']:9.2f} {r['forward_s']:7.2f} "
            f"{100 * r['graph_share']:8.1f} {r['encode_s']:7.2f} {r['decode_s']:7.2f} {r['peak_gb']:8.2f} "
            f"{r.get('train_step_s', float('nan')):8.2f} {r.get('train_peak_gb', float('nan')):9.2f}  "
            f"{r.get('train_batch', '-')}" + (f" (after {r['train_warmup_steps']} warm-up steps)"
                                               if "train_warmup_steps" in r else ""))


def _print_slopes(label: str, rows: List[Dict]) -> None:
    """Log-log slopes of time against pixels over the image sizes of ``rows`` (best run per size)."""
    best: Dict[str, Dict[str, float]] = {}
    for r in rows:
        w, h = parse_image_size(r["image"])
        b = best.setdefault(r["image"], {"pixels": w * h})
        for k in ("forward_s", "encode_s", "decode_s", "peak_gb"):
            b[k] = min(b.get(k, math.inf), r[k])
    if len(best) < 2:
        return
    pts = sorted(best.values(), key=lambda b: b["pixels"])
    px = [b["pixels"] for b in pts]
    print(f"{label:14} log-log slope against pixels ({len(px)} sizes): "
          + ", ".join(f"{k} {loglog_slope(px, [b[k] for b in pts]):.2f}" for k in ("forward_s", "encode_s", "decode_s",
                                                                                     "peak_gb")), flush=True)


def bench_codec(models: List[str], sizes: List[str], image: Optional[str], runs: int, train_batch: Dict[str, int],
                train_patch: Dict[str, int], train: bool, authors: Optional[Dict[str, str]] = None,
                rounds: int = 1, image_sizes: Optional[List[str]] = None) -> List[Dict]:
    """Whole models, each in a fresh process. With ``authors`` (model name -> the authors'
    checkout), the paper models alternate with the authors' own, process by process, for
    ``rounds`` rounds, and the ratios of the best figures of each side are printed. With
    several ``image_sizes`` (``"WxH"``, noise images) every model runs at each, the training
    step only at the first, and the log-log slopes of time and peak memory against the
    pixel count are printed for each side."""
    authors = authors or {}
    image_sizes = list(image_sizes or [None])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, image "
          f"{image or ', '.join(s or DEFAULT_IMAGE_SIZE for s in image_sizes) + ' noise'}")
    print(f"{'model':6} {'size':7} {'image':>9} {'params M':>9} {'fwd s':>7} {'graph %':>8} {'enc s':>7} {'dec s':>7} "
          f"{'peak GB':>8} {'train s':>8} {'train GB':>9}  batch")
    rows = []
    for size in sizes:
        for name in models:
            side_by_side = size == "paper" and name in authors
            all_ours, all_theirs = [], []
            for i, image_size in enumerate(image_sizes):
                step = train and i == 0
                ours, theirs = [], []
                for _ in range(rounds if side_by_side else 1):
                    args, train_args = [image, runs, image_size], [runs, train_batch[size], train_patch[size]]
                    sides = [(ours, "codec", "train", [name, size])]
                    if side_by_side:
                        sides.append((theirs, "authors", "authors-train", [name, authors[name]]))
                    for rows_of_side, codec_task, train_task, who in sides:
                        r = run_child(codec_task, [*who, *args])
                        if step:  # the training step in a process of its own: a training job's memory
                            r.update(run_child(train_task, [*who, *train_args]))
                        rows_of_side.append(r)
                        print(_codec_row(r), flush=True)
                rows += ours + theirs
                all_ours += ours
                all_theirs += theirs
                if theirs:
                    keys = ["forward_s", "encode_s", "decode_s", "peak_gb"] + (["train_step_s", "train_peak_gb"] if step
                                                                               else [])
                    best = {k: (min(r[k] for r in ours), min(r[k] for r in theirs)) for k in keys}
                    for k, theirs_k in (("encode_float_s", "encode_s"), ("decode_float_s", "decode_s")):
                        if all(k in r for r in ours):  # equal work: our float entropy path against theirs
                            best[k] = (min(r[k] for r in ours), min(r[theirs_k] for r in theirs))
                    print(f"{'':14} ours / authors (best of {rounds}): "
                          + ", ".join(f"{k} {a / b:.2f}x" for k, (a, b) in best.items()), flush=True)
            if not image:
                _print_slopes(f"{name} {size}", all_ours)
                if all_theirs:
                    _print_slopes(f"{name} authors", all_theirs)
    return rows


#: the tasks a child process of this benchmark runs
CHILD_TASKS = {"codec": _codec_one, "authors": _codec_authors, "train": _train_one, "authors-train": _train_authors}
