"""Do decoded latents depend on the machine? Encode once, decode in fresh processes.

``python -m gnn_lic.codec.portability --model glic --size small --images DIR --out DIR``

1. an *encode* process (``--enc-threads``, default 2) compresses every image with the
   fixed-point entropy parameters (``--scheme``: fx16 or w8, default the model's own, reported
   as ``arithmetic``) and with the float ones (format-1 path), decodes both
   in the same process for reference latents, and times both paths;
2. one *decode* process per setting (1 thread; 2 threads; 1 thread with
   ``GNN_LIC_NUMBA=0``; scheme w8's products forced to byte digits and to float64,
   ``GNN_LIC_W8_PRODUCTS``; float64 transforms; two images decoded as one batch; on the GPU when
   CUDA is available) decodes the saved strings and compares its latents with the
   reference, bit for bit.

``--enc-device cuda`` encodes on the GPU instead. ``--decode-only`` skips step 1 and decodes
what an earlier run left in ``--out``, e.g. strings encoded on another machine and copied
here: the files travel if every setting decodes every image.

The report (JSON on stdout and in ``OUT/report-MODEL-SIZE.json``) gives, per setting and
path, how many images decode to identical latents, the payload bytes of both paths and
the encode/decode times. The setting is chosen by the parent through the environment and
arguments only, so every decode starts from a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["main"]


def _load(model: str, size: str, float64: bool = False, device: str = "cpu"):
    from gnn_lic.models import create_model  # noqa: PLC0415

    net = create_model(model, size=size, pretrained=True)
    if float64:
        net = net.double()
    return net.to(device).eval()


def _to_tensor(path: Path, dtype):
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from gnn_lic.codec.image_io import read_image  # noqa: PLC0415

    arr = read_image(path)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0).to(dtype).div(255.0)


def _latents(net, strings, shape):
    import torch  # noqa: PLC0415

    from gnn_lic.models.base import from_jsonable  # noqa: PLC0415

    with torch.no_grad():
        return net.latent_codec.decompress(strings, from_jsonable(shape["latent"]))["y_hat"].float().cpu()


def _paths(net, scheme: Optional[str]):
    """``(report key, arithmetic)`` of the two paths: the fixed-point scheme (``--scheme``, else the
    model's own) and the float networks."""
    from gnn_lic.models.entropy import SCHEME_ARITHMETICS  # noqa: PLC0415

    fixed = SCHEME_ARITHMETICS.get(scheme) or getattr(net.latent_codec, "arithmetic", "fixed")
    return (("fixed", fixed), ("float", "float"))


def _payload(strings) -> int:
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    return sum(_payload(s) for s in strings)


def _encode(args) -> None:
    import torch  # noqa: PLC0415

    from gnn_lic.models.entropy import entropy_arithmetic  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    net = _load(args.model, args.size, device=args.device)
    out = Path(args.out)
    records = []
    paths = _paths(net, args.scheme)
    for path in sorted(Path(args.images).glob("*.png"))[: args.limit]:
        x = _to_tensor(path, torch.float32).to(args.device)
        rec: Dict[str, Any] = {"image": path.name, "pixels": x.shape[-1] * x.shape[-2]}
        blobs = {}
        for key, mode in paths:
            with entropy_arithmetic(net, mode), torch.no_grad():
                t0 = time.perf_counter()
                enc = net.compress(x)
                t1 = time.perf_counter()
                y_hat = _latents(net, enc["strings"], enc["shape"])
                t2 = time.perf_counter()
            with torch.no_grad():
                net.g_s(y_hat.to(args.device))
                if x.is_cuda:
                    torch.cuda.synchronize()
            t3 = time.perf_counter()
            rec[key] = {"bytes": _payload(enc["strings"]), "enc_s": t1 - t0, "dec_s": t3 - t1, "latent_dec_s": t2 - t1}
            blobs[key] = {"strings": enc["strings"], "shape": enc["shape"], "y_hat": y_hat}
        rec["arithmetic"] = paths[0][1]
        rec.update(device=str(x.device), model=f"{args.model}-{args.size}", threads=args.threads)
        torch.save(blobs, out / f"{path.stem}.pt")
        records.append(rec)
    (out / "encode.json").write_text(json.dumps(records))


def _decode(args) -> None:
    import torch  # noqa: PLC0415

    from gnn_lic.models.entropy import entropy_arithmetic  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    net = _load(args.model, args.size, float64=args.float64, device=args.device)
    out = Path(args.out)
    files = sorted(p for p in out.glob("*.pt"))
    result: Dict[str, List[str]] = {"fixed": [], "float": []}
    for key, mode in _paths(net, args.scheme):
        blobs = [(p.stem, torch.load(p, weights_only=False)[key]) for p in files]
        if args.batch:
            # decode images of one size two at a time: the strings of both in one call
            by_size: Dict[Any, list] = {}
            for name, b in blobs:
                by_size.setdefault(tuple(b["shape"]["image"]), []).append((name, b))
            for group in by_size.values():
                for i in range(0, len(group) - 1, 2):
                    (na, a), (nb, b) = group[i], group[i + 1]
                    strings = _merge(a["strings"], b["strings"])
                    try:
                        with entropy_arithmetic(net, mode):
                            y = _latents(net, strings, a["shape"])
                    except Exception:  # noqa: BLE001 - a corrupt float decode may raise anything
                        continue
                    result[key] += [n for n, ref, got in ((na, a, y[0:1]), (nb, b, y[1:2])) if torch.equal(got, ref["y_hat"])]
            continue
        for name, b in blobs:
            try:
                with entropy_arithmetic(net, mode):
                    y = _latents(net, b["strings"], b["shape"])
            except Exception:  # noqa: BLE001
                continue
            if torch.equal(y, b["y_hat"]):
                result[key].append(name)
    print(json.dumps({"identical": result, "total": len(files)}))


def _merge(a, b):
    """Strings of two images as one batch: every innermost list gets both entries."""
    if isinstance(a, list) and a and isinstance(a[0], (bytes, bytearray)):
        return [*a, *b]
    return [_merge(x, y) for x, y in zip(a, b)]


SETTINGS = {
    "1-thread": ({}, ["--threads", "1"]),
    "2-threads": ({}, ["--threads", "2"]),
    "1-thread-no-numba": ({"GNN_LIC_NUMBA": "0"}, ["--threads", "1"]),
    "w8-digit-products": ({"GNN_LIC_W8_PRODUCTS": "digits"}, ["--threads", "1"]),
    "w8-float64-products": ({"GNN_LIC_W8_PRODUCTS": "float64"}, ["--threads", "1"]),
    "float64-transforms": ({}, ["--threads", "1", "--float64"]),
    "batch-of-2": ({}, ["--threads", "1", "--batch"]),
}
#: added where CUDA is available: the same strings decoded on the GPU
CUDA_SETTING = {"cuda": ({}, ["--threads", "1", "--device", "cuda"])}
#: added where PyTorch has oneDNN's exact byte product: scheme w8's seven-bit digits
ONEDNN_SETTING = {"w8-onednn-products": ({"GNN_LIC_W8_PRODUCTS": "onednn"}, ["--threads", "1"])}


def _cuda_available() -> bool:
    import torch  # noqa: PLC0415

    return torch.cuda.is_available()


def settings() -> Dict[str, Any]:
    """The decode settings of this machine: :data:`SETTINGS`, oneDNN's byte products where they work, and
    the GPU where there is one."""
    from gnn_lic.models.fixed_point import onednn  # noqa: PLC0415

    return {**SETTINGS, **(ONEDNN_SETTING if onednn.available() else {}),
            **(CUDA_SETTING if _cuda_available() else {})}


def _child(role: str, args, extra_env: Dict[str, str], extra: Sequence[str]) -> str:
    env = {**os.environ, **extra_env, "OMP_NUM_THREADS": extra[1] if extra[:1] == ["--threads"] else "1"}
    cmd = [sys.executable, "-m", "gnn_lic.codec.portability", "--role", role, "--model", args.model,
           "--size", args.size, "--images", str(args.images), "--out", str(args.out), "--limit", str(args.limit),
           *(["--scheme", args.scheme] if args.scheme else []), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{role} process failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gnn_lic.codec.portability", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="glic")
    p.add_argument("--size", default="small")
    p.add_argument("--images", type=Path, help="folder of .png images (not needed with --decode-only)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--limit", type=int, default=24, help="at most this many images (sorted by name)")
    p.add_argument("--enc-threads", type=int, default=2)
    p.add_argument("--scheme", choices=("fx16", "w8"), help="fixed-point scheme (default: the model's own)")
    p.add_argument("--enc-device", default="cpu", help="device of the encoder, e.g. cuda [cpu]")
    p.add_argument("--decode-only", action="store_true",
                   help="decode the strings an earlier run (another machine, say) left in --out; no encoding")
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--role", choices=("main", "encode", "decode"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--float64", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "encode":
        _encode(args)
        return 0
    if args.role == "decode":
        _decode(args)
        return 0
    model, encoded = f"{args.model}-{args.size}", args.out / "encode.json"
    if args.decode_only:
        if not encoded.is_file():
            p.error(f"--decode-only: no encode.json in {args.out} (run once without --decode-only first)")
    elif args.images is None or not args.images.is_dir():
        p.error(f"--images: not a folder: {args.images}")
    elif args.enc_device.startswith("cuda") and not _cuda_available():
        p.error("--enc-device cuda: CUDA is not available here")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        _child("encode", args, {}, ["--threads", str(args.enc_threads), "--device", args.enc_device])
    records = json.loads(encoded.read_text())
    encoded_by = {r.get("model") for r in records}
    if args.decode_only and encoded_by - {model}:
        p.error(f"--decode-only: {args.out} holds strings of {', '.join(sorted(map(str, encoded_by)))}, not {model}")
    report: Dict[str, Any] = {"model": model, "images": len(records),
                              "encode_threads": records[0].get("threads", args.enc_threads) if records else None,
                              "decode_only": args.decode_only,
                              "encode_device": records[0].get("device", "cpu") if records else None,
                              "arithmetic": records[0]["arithmetic"] if records else None, "settings": {}}
    for name, (env, extra) in settings().items():
        got = json.loads(_child("decode", args, env, extra).strip().splitlines()[-1])
        report["settings"][name] = {m: len(v) for m, v in got["identical"].items()}
    pixels = sum(r["pixels"] for r in records)
    for mode in ("fixed", "float"):
        report[mode] = {
            "payload_bytes": sum(r[mode]["bytes"] for r in records),
            "bpp": 8 * sum(r[mode]["bytes"] for r in records) / pixels,
            "encode_s": sum(r[mode]["enc_s"] for r in records),
            "decode_s": sum(r[mode]["dec_s"] for r in records),
            "latent_decode_s": sum(r[mode]["latent_dec_s"] for r in records),
        }
    report["rate_cost_percent"] = 100 * (report["fixed"]["payload_bytes"] / report["float"]["payload_bytes"] - 1)
    report["per_image_bytes"] = {r["image"]: [r["fixed"]["bytes"], r["float"]["bytes"]] for r in records}
    text = json.dumps(report, indent=1)
    (args.out / f"report-{args.model}-{args.size}.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
