"""GPU readiness check: one short run that says whether gnn_lic works on a CUDA device, and how fast.

Usage::

    python experiments/gpu_check.py                       # on cuda; paper models; a few minutes on one GPU
    python experiments/gpu_check.py --device cpu --quick  # tiny models and sizes (what the tests run)
    python experiments/gpu_check.py --json gpu_check.json --models glic gabic wacnn

It prints one table (device name; then per model: eval forward + backward time and peak
CUDA memory at 768x512, compress / decompress time with the round trip checked against
the eval-mode forward, training-step throughput in images/s at batch 8 of 256x256 with
Adam; whether strings encoded on the CPU decode on the device to the same latents, bit for
bit, and the other way round (shipped ``small`` weights); and whether graph construction on
the device gives, edge for edge, the CPU's
graphs of the same float64 feature map for every candidate rule and selector of
:mod:`gnn_lic.graph`). ``--quick`` uses the ``tiny`` models, 128x128 images and batch 2 of
64x64. Models are untrained (seeded), which is enough to check numerics and speed.

Exit status: 0 when every check passed, 1 when one failed (non-finite output or
gradient, round trip off, graphs differing, an exception such as out-of-memory), 2 for
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gnn_lic.models.base import crop_to, pad_to_multiple  # noqa: E402
from gnn_lic.models.zoo import shipped_weights  # noqa: E402

PROG = "gpu_check.py"
#: |decompress(compress(x)) - g_s(decoded latents)| allowed: the same synthesis of the same latents, float noise
ROUNDTRIP_ATOL = 1e-3
#: mean |decompress(compress(x)) - forward(x)| allowed: the fixed-point entropy means differ from the float
#: forward's by rounding (scheme w8, the default: by 8-bit weights), which can move a latent across a
#: quantisation step in an untrained model (and one such latent can move pixels by more than 0.1, so the
#: largest difference says nothing); a decoder out of step gives several times this
FORWARD_MEAN_ATOL = 5e-2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    """Best of ``repeat`` timed calls after one warm-up call, in seconds."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _images(n: int, h: int, w: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] (blurred noise plus a ramp), so that latents are not trivial."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 3, h, w, generator=g), 5, stride=1, padding=2,
                                       count_include_pad=False)
    return (0.6 * x + 0.4 * torch.linspace(0, 1, w).view(1, 1, 1, w)).clamp(0, 1).to(device)


def _model(name: str, size: str, device: torch.device, seed: int = 0):
    from gnn_lic.models import create_model  # noqa: PLC0415

    torch.manual_seed(seed)
    return create_model(name, size=size).to(device)


def _rd_loss(net, x: torch.Tensor) -> torch.Tensor:
    from gnn_lic.training.losses import RateDistortionLoss  # noqa: PLC0415

    return RateDistortionLoss(0.0130, "mse", 0.1)(net(x), x, net)["loss"]


# ----------------------------------------------------------------------------- the checks


def check_forward_backward(name: str, size: str, hw: Sequence[int], device: torch.device, repeat: int) -> Dict:
    """Eval forward time, forward + backward time and peak memory of one image; finite outputs and gradients."""
    net = _model(name, size, device)
    x = _images(1, *hw, device)
    net.eval()
    with torch.no_grad():
        out = net(x)
        fwd = _timed(lambda: net(x), device, repeat)
    finite = bool(torch.isfinite(out["x_hat"]).all()) and all(bool(torch.isfinite(v).all())
                                                              for v in out["likelihoods"].values())
    net.train()

    def fwd_bwd():
        net.zero_grad(set_to_none=True)
        _rd_loss(net, x).backward()

    _reset_peak(device)
    t = _timed(fwd_bwd, device, repeat)
    peak = _peak_mib(device)
    grads = [p.grad for n, p in net.named_parameters() if not n.endswith("quantiles")]
    grads_ok = all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    ok = finite and grads_ok
    return {"check": f"{name}-{size} forward+backward {hw[1]}x{hw[0]}", "ok": ok, "forward_s": fwd,
            "forward_backward_s": t, "peak_mib": peak,
            "detail": "" if ok else f"finite outputs: {finite}, finite gradients: {grads_ok}"}


def check_roundtrip(name: str, size: str, hw: Sequence[int], device: torch.device) -> Dict:
    """compress -> decompress on the device: the decoded latents are the encoder's, bit for bit, the image
    is their synthesis (``g_s``) up to float noise, and on average close to the eval-mode forward."""
    net = _model(name, size, device)
    net.update(force=True)
    net.eval()
    x = _images(1, *hw, device, seed=1)
    with torch.no_grad():
        ref = net(x)["x_hat"].clamp(0, 1)
    _sync(device)
    t = time.perf_counter()
    enc = net.compress(x)
    _sync(device)
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
    _sync(device)
    t_dec = time.perf_counter() - t
    nbytes = sum(len(s) for s in _leaves(enc["strings"]))
    with torch.no_grad():  # the latents themselves: what a portable stream guarantees
        y = net.g_a(pad_to_multiple(x, net.pad_multiple)[0])
        lat = net.latent_codec.compress(y)
        y_hat = net.latent_codec.decompress(lat["strings"], lat["shape"])["y_hat"]
        same = torch.equal(lat["y_hat"], y_hat)
        synth = crop_to(net.g_s(y_hat).clamp(0, 1), x.shape[-2:])
    err = float((dec - synth).abs().max())
    mean_err = float((dec - ref).abs().mean())
    ok = (dec.shape == x.shape and dec.device.type == device.type and err <= ROUNDTRIP_ATOL and same
          and mean_err <= FORWARD_MEAN_ATOL)
    return {"check": f"{name}-{size} compress/decompress {hw[1]}x{hw[0]}", "ok": ok, "compress_s": t_enc,
            "decompress_s": t_dec, "bytes": nbytes, "max_abs_diff": err, "forward_mean_diff": mean_err,
            "detail": "" if ok else (f"|decoded - synthesis| = {err:.3g} (allowed {ROUNDTRIP_ATOL:g}), mean "
                                     f"|decoded - forward| = {mean_err:.3g} (allowed {FORWARD_MEAN_ATOL:g}), "
                                     f"latents identical: {same}")}


def check_cross_device(name: str, hw: Sequence[int], device: torch.device) -> Dict:
    """Streams travel between the CPU and the device: with the shipped ``small`` weights, strings encoded
    on either decode on both to the encoder's latents, bit for bit."""
    from gnn_lic.models import create_model  # noqa: PLC0415

    devices = {"cpu": torch.device("cpu"), device.type: device}
    nets = {k: create_model(name, size="small", pretrained=True).to(d).eval() for k, d in devices.items()}
    x = _images(1, *hw, torch.device("cpu"), seed=4)
    with torch.no_grad():
        enc = {k: net.latent_codec.compress(net.g_a(pad_to_multiple(x.to(devices[k]), net.pad_multiple)[0]))
               for k, net in nets.items()}
        wrong = [f"{src}->{dst}" for src in enc for dst in nets
                 if not torch.equal(nets[dst].latent_codec.decompress(enc[src]["strings"], enc[src]["shape"])
                                    ["y_hat"].cpu(), enc[src]["y_hat"].cpu())]
    same_bytes = len({tuple(_leaves(e["strings"])) for e in enc.values()}) == 1
    return {"check": f"{name}-small strings cpu<->{device.type} {hw[1]}x{hw[0]}", "ok": not wrong,
            "bytes": sum(len(b) for b in _leaves(enc["cpu"]["strings"])),
            "detail": f"latents differ: {', '.join(wrong)}" if wrong else
            ("both encoders wrote the same bytes" if same_bytes else "the encoders' bytes differ")}


def check_train_throughput(name: str, size: str, batch: int, patch: int, device: torch.device, steps: int) -> Dict:
    """Images per second of full training steps (forward, RD loss, backward, clipping, Adam, aux step)."""
    from gnn_lic.training.optim import configure_optimizers, grad_norm_and_clip  # noqa: PLC0415

    net = _model(name, size, device)
    net.train()
    opt, aux_opt = configure_optimizers(net, lr=1e-4, aux_lr=1e-3)
    x = _images(batch, patch, patch, device, seed=2)
    params = [p for n, p in net.named_parameters() if not n.endswith("quantiles")]
    losses: List[float] = []

    def step():
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        loss = _rd_loss(net, x)
        loss.backward()
        grad_norm_and_clip(params, 1.0)
        opt.step()
        net.aux_loss().backward()
        aux_opt.step()
        losses.append(float(loss.detach()))

    _reset_peak(device)
    t = _timed(step, device, steps)
    ok = all(map(lambda v: v == v and abs(v) != float("inf"), losses))
    return {"check": f"{name}-{size} training step, batch {batch} of {patch}x{patch}", "ok": ok, "step_s": t,
            "images_per_s": batch / t, "peak_mib": _peak_mib(device),
            "detail": "" if ok else f"non-finite loss: {losses}"}


def check_graphs(device: torch.device, shape: Sequence[int]) -> List[Dict]:
    """Device graphs == CPU graphs, edge for edge, for the same float64 map (every candidate rule and selector)."""
    from gnn_lic.graph import (AdaptiveDegree, BlockWindow, GlobalGrid, LocalWindow, TopK,  # noqa: PLC0415
                               WindowPartition, build_graphs)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    csets = {"local": LocalWindow(8), "block": BlockWindow(8, 16),
             "block-official": BlockWindow(8, 16, border="zero", group_quota=True), "global": GlobalGrid(16),
             "window": WindowPartition(8)}
    selectors = {"adaptive": AdaptiveDegree(16, score="rms", iters=5),
                 "adaptive-official": AdaptiveDegree(16, score="rms-official", iters=5, bisection="official"),
                 "topk": TopK(9)}
    xd = x.to(device)
    rows = []
    for sname, sel in selectors.items():
        cpu = build_graphs(x, csets, sel)
        dev = build_graphs(xd, csets, sel)
        # timed after these first calls (compiled CPU kernels, CUDA context and caches are warm)
        t_cpu = _timed(lambda: build_graphs(x, csets, sel), torch.device("cpu"), 1)
        t_dev = _timed(lambda: build_graphs(xd, csets, sel), device, 1)
        for cname in csets:
            a, b = cpu[cname], dev[cname]
            same = a.num_nodes == b.num_nodes and _sorted_edges(a).equal(_sorted_edges(b).cpu())
            on_device = b.col.device.type == device.type
            ok = same and on_device
            detail = "" if ok else (f"edges differ ({a.num_edges} on cpu, {b.num_edges} on {device.type})"
                                    if not same else f"graph left on {b.col.device}")
            rows.append({"check": f"graph {cname}/{sname} {device.type} vs cpu {tuple(shape)}", "ok": ok,
                         "edges": a.num_edges, "cpu_s": t_cpu, "device_s": t_dev, "detail": detail})
    return rows


def _sorted_edges(graph) -> torch.Tensor:
    key = graph.row.long() * graph.num_nodes + graph.col.long()
    return torch.sort(key).values


def _leaves(strings) -> List[bytes]:
    if isinstance(strings, bytes):
        return [strings]
    return [s for item in strings for s in _leaves(item)]


# ----------------------------------------------------------------------------- driver


def _guard(fn: Callable[[], Any], label: str) -> List[Dict]:
    """Run one check; an exception (e.g. out of memory) becomes a failed row."""
    try:
        res = fn()
        return res if isinstance(res, list) else [res]
    except Exception as exc:  # noqa: BLE001 - a failed check must not stop the others
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        traceback.print_exc(file=sys.stderr)
        return [{"check": label, "ok": False, "detail": msg}]
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_checks(device: torch.device, quick: bool, models: Sequence[str]) -> Dict[str, Any]:
    size = "tiny" if quick else "paper"
    fb_hw = (128, 128) if quick else (512, 768)  # (H, W): a 768x512 image, as Kodak's
    rt_hw = fb_hw
    batch, patch = (2, 64) if quick else (8, 256)
    repeat = 1 if quick else 3
    graph_shape = (1, 16, 24, 40) if quick else (2, 64, 64, 96)
    rows: List[Dict] = []
    for name in models:
        rows += _guard(lambda: check_forward_backward(name, size, fb_hw, device, repeat), f"{name} forward+backward")
        rows += _guard(lambda: check_roundtrip(name, size, rt_hw, device), f"{name} compress/decompress")
        rows += _guard(lambda: check_train_throughput(name, size, batch, patch, device, repeat),
                       f"{name} training step")
        if shipped_weights(name, "small"):
            rows += _guard(lambda: check_cross_device(name, rt_hw, device), f"{name} strings across devices")
    rows += _guard(lambda: check_graphs(device, graph_shape), "graph construction")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "quick": quick, "rows": rows, "ok": all(r["ok"] for r in rows)}


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}{unit}"
    return f"{v}{unit}"


def format_table(report: Dict[str, Any]) -> str:
    lines = [f"device: {report['device']} ({report['device_name']}), torch {report['torch']}, "
             f"CUDA {report['cuda'] or '-'}{' [quick]' if report['quick'] else ''}",
             f"{'check':<58} {'result':>6}  measurements"]
    for r in report["rows"]:
        meas = []
        for key, label, unit in (("forward_s", "fwd", " s"), ("forward_backward_s", "fwd+bwd", " s"),
                                 ("compress_s", "enc", " s"), ("decompress_s", "dec", " s"),
                                 ("max_abs_diff", "max |dec - g_s|", ""), ("forward_mean_diff", "mean |dec - fwd|", ""),
                                 ("step_s", "step", " s"),
                                 ("images_per_s", "", " img/s"), ("edges", "E", ""), ("cpu_s", "cpu", " s"),
                                 ("device_s", "dev", " s"), ("peak_mib", "peak", " MiB")):
            if key in r and r[key] is not None:
                meas.append(f"{label}{' ' if label else ''}{_fmt(r[key], unit)}")
        if r.get("detail"):
            meas.append(r["detail"])
        lines.append(f"{r['check']:<58} {'ok' if r['ok'] else 'FAIL':>6}  {', '.join(meas)}")
    lines.append("all checks passed" if report["ok"] else "SOME CHECKS FAILED")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu [default: cuda]")
    ap.add_argument("--quick", action="store_true", help="tiny models and sizes (seconds, also on a CPU)")
    ap.add_argument("--models", nargs="+", default=["glic", "gabic"], help="registered models [glic gabic]")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from gnn_lic.models import list_models  # noqa: PLC0415

    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"{PROG}: error: bad device {args.device!r}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"{PROG}: error: CUDA is not available here (use --device cpu --quick)", file=sys.stderr)
        return 2
    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        print(f"{PROG}: error: unknown model(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    report = run_checks(device, args.quick, args.models)
    report["total_s"] = time.perf_counter() - t0
    print(format_table(report))
    print(f"total {report['total_s']:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
