"""Structure-aware fuzzing of the ``.glic`` decoder: ``python -m gnn_lic.codec.fuzz --cases 10000``.

Seed streams are encoded from small synthetic images; every case mutates one of them and
is decoded by a worker process under a wall-clock limit (a case over ``--timeout``
seconds counts as a hang and the worker is replaced) and an address-space limit
(``--memory-gb``). Two families of mutations:

* *CRC kept valid* (the stream is re-packed, so the mutation reaches the model and the
  entropy decoder): payload strings flipped, truncated, extended, replaced by random
  bytes, dropped, duplicated or swapped; image sizes changed (small, or far beyond the
  pixel limit); an explicit, mutated ``shape``; the fixed-point flag toggled;
* *plain bytes* (the checksum no longer matches): flips, insertions, deletions,
  truncations, random tails.

Each outcome is one of: ``decoded`` (allowed only for CRC-valid mutations: decoded garbage
is the expected result of a recomputed checksum), ``codec-error`` (a one-line
:class:`~gnn_lic.errors.CodecError`), ``other-exception`` (any other exception: a
bug), ``crash`` (the worker died) and ``hang``. The report is JSON; the exit status is 1
when a bug class is non-empty.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "mutate", "build_model", "seed_streams"]

BUGS = ("other-exception", "crash", "hang", "multi-line-error", "decoded-after-byte-mutation")


def build_model(name: str, pretrained: bool):
    """The fuzzed model: shipped ``small`` weights, or a seeded ``tiny`` one with non-trivial latents."""
    import torch  # noqa: PLC0415

    from gnn_lic.models import create_model  # noqa: PLC0415

    if pretrained:
        return create_model(name, size="small", pretrained=True).eval()
    torch.manual_seed(0)
    net = create_model(name, size="tiny")
    with torch.no_grad():  # untrained latents all round to 0: scale the conv that makes y
        last = net.g_a.down[3] if hasattr(net.g_a, "down") else [m for m in net.g_a if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(30.0)
        if last.bias is not None:
            last.bias.mul_(30.0)
    net.update(force=True)
    return net.eval()


def seed_streams(net) -> List[bytes]:
    """Streams of a few small deterministic images (different sizes, so different shapes)."""
    import numpy as np  # noqa: PLC0415

    from gnn_lic.codec import encode_image  # noqa: PLC0415

    out = []
    for h, w in ((1, 1), (17, 33), (48, 64), (70, 40)):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 7 + yy * 3) % 256, (xx * yy) % 256, (200 - 2 * yy) % 256], -1).astype(np.uint8)
        out.append(encode_image(net, img))
    return out


def _repack(p, **changes) -> bytes:
    from gnn_lic.codec.container import pack_stream  # noqa: PLC0415

    fields = dict(model_name=p.model_name, model_size=p.model_size, identity=p.identity, fixed_point=p.fixed_point,
                  w8=p.w8, height=p.height, width=p.width, shape=p.shape, strings=p.strings)
    fields.update(changes)
    return pack_stream(**fields)


def _mutate_bytes(rng: random.Random, s: bytes) -> bytes:
    s = bytearray(s)
    op = rng.randrange(6)
    if op == 0 and s:  # flip bits
        for _ in range(rng.randint(1, 8)):
            s[rng.randrange(len(s))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        s = s[: rng.randrange(len(s) + 1)]
    elif op == 2:  # extend
        s += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == 3:  # replace by random
        s = bytearray(rng.randrange(256) for _ in range(rng.randint(0, 2 * len(s) + 8)))
    elif op == 4:  # zeros / ones
        s = bytearray([rng.choice((0, 255))]) * len(s)
    else:  # overwrite a run
        if s:
            i = rng.randrange(len(s))
            for k in range(i, min(len(s), i + rng.randint(1, 16))):
                s[k] = rng.randrange(256)
    return bytes(s)


def mutate(rng: random.Random, data: bytes) -> Tuple[str, bytes, bool]:
    """One mutated stream: ``(mutation name, bytes, crc_valid)``."""
    from gnn_lic.codec.container import parse_stream  # noqa: PLC0415

    p = parse_stream(data)
    if rng.random() < 0.3:  # plain byte mutations: the checksum must catch them
        b = bytearray(data)
        op = rng.randrange(4)
        if op == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[rng.randrange(len(b))]
        elif op == 2:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        else:
            b = b[: rng.randrange(len(b))]
        return f"bytes-{('flip', 'delete', 'insert', 'truncate')[op]}", bytes(b), False
    flat = [s for group in p.strings for s in group]
    op = rng.randrange(8)
    if op <= 2:  # one payload string
        i = rng.randrange(len(flat))
        groups = [list(g) for g in p.strings]
        gi = [k for k, g in enumerate(groups) for _ in g][i]
        groups[gi][0] = _mutate_bytes(rng, groups[gi][0])
        return "string", _repack(p, strings=groups), True
    if op == 3:  # structure of the strings
        groups = [list(g) for g in p.strings]
        kind = rng.randrange(4)
        if kind == 0 and len(groups) > 1:
            groups.pop(rng.randrange(len(groups)))
        elif kind == 1:
            groups.insert(rng.randrange(len(groups) + 1), [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))])
        elif kind == 2:
            rng.shuffle(groups)
        else:
            groups[rng.randrange(len(groups))].append(b"\x00" * rng.randint(0, 8))  # a batch of two
        return "strings-structure", _repack(p, strings=groups), True
    if op == 4:  # image size
        if rng.random() < 0.2:
            h, w = rng.choice([(1 << 20, 1 << 20), (1 << 20, 1), (1, 1 << 20), (1 << 14, 1 << 13), (4000, 3000)])
        else:
            h, w = rng.randint(1, 160), rng.randint(1, 160)
        return "image-size", _repack(p, height=h, width=w), True
    if op == 5:  # an explicit shape
        hz, wz = rng.randint(-2, 6), rng.randint(-2, 6)
        candidates = [
            {"latent": [hz, wz], "image": [p.height, p.width]},
            {"latent": [hz, wz, rng.randint(-1, 3)], "image": [p.height, p.width]},
            {"latent": [hz, wz], "image": [rng.randint(-5, 500), rng.randint(-5, 500)]},
            {"latent": {"y": [[1, hz, wz]], "hyper": [hz, wz]}, "image": [p.height, p.width]},
            {"image": [p.height, p.width]},
            [hz, wz],
            None,
            {"latent": [2**40, 1], "image": [1, 1]},
        ]
        shape = rng.choice(candidates)
        if shape is None:
            shape = "not a shape"
        return "shape", _repack(p, shape=shape), True
    if op == 6:  # identity / model fields
        if rng.random() < 0.5:
            if p.fixed_point and rng.random() < 0.5:  # the other fixed-point scheme
                return "fixed-flag", _repack(p, w8=not p.w8), True
            return "fixed-flag", _repack(p, fixed_point=not p.fixed_point, w8=False), True
        ident = bytearray(p.identity)
        ident[rng.randrange(len(ident))] ^= 1 << rng.randrange(8)
        return "identity", _repack(p, identity=bytes(ident)), True
    # several string mutations at once
    groups = [[_mutate_bytes(rng, s) if rng.random() < 0.5 else s for s in g] for g in p.strings]
    return "strings-many", _repack(p, strings=groups), True


# ------------------------------------------------------------------------------ worker


def _worker(conn, model: str, pretrained: bool, memory_gb: float, max_pixels: int) -> None:
    import os  # noqa: PLC0415
    import resource  # noqa: PLC0415

    os.environ["GNN_LIC_MAX_PIXELS"] = str(max_pixels)
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    net = build_model(model, pretrained)
    from gnn_lic.codec import decode_image as _decode  # noqa: PLC0415

    for data in seed_streams(net):  # warm up (lazy tables, compiled kernels) outside the time limit
        _decode(net, data)
    if memory_gb > 0:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from gnn_lic.codec import CodecError, decode_image  # noqa: PLC0415

    conn.send(("ready", ""))
    while True:
        data = conn.recv()
        if data is None:
            return
        try:
            decode_image(net, data)
            conn.send(("decoded", ""))
        except CodecError as exc:
            msg = str(exc)
            conn.send(("codec-error" if msg and "\n" not in msg else "multi-line-error", f"{type(exc).__name__}: {msg[:200]}"))
        except BaseException as exc:  # noqa: BLE001 - classify everything
            conn.send(("other-exception", f"{type(exc).__name__}: {str(exc)[:200]}"))


class _Worker:
    def __init__(self, model: str, pretrained: bool, memory_gb: float, max_pixels: int):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, model, pretrained, memory_gb, max_pixels), daemon=True)
        self.proc.start()
        if not self.conn.poll(600):
            raise RuntimeError("the fuzz worker did not start")
        self.conn.recv()

    def run(self, data: bytes, timeout: float) -> Tuple[str, str, float]:
        t0 = time.perf_counter()
        try:
            self.conn.send(data)
            if not self.conn.poll(timeout):
                self.kill()
                return "hang", f"over {timeout:g} s", time.perf_counter() - t0
            status, detail = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.proc.join(1)
            return "crash", f"worker exit code {self.proc.exitcode}", time.perf_counter() - t0
        return status, detail, time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        self.kill()


def run_fuzz(model: str, cases: int, seed: int, timeout: float, memory_gb: float, pretrained: bool = False,
             budget_s: Optional[float] = None, max_pixels: int = 1 << 18) -> Dict[str, Any]:
    """Run ``cases`` mutations (or until ``budget_s`` seconds); return the report dict."""
    net = build_model(model, pretrained)
    seeds = seed_streams(net)
    rng = random.Random(seed)
    worker = _Worker(model, pretrained, memory_gb, max_pixels)
    counts: Dict[str, int] = {}
    by_mutation: Dict[str, Dict[str, int]] = {}
    bugs: List[Dict[str, Any]] = []
    slowest = 0.0
    start = time.perf_counter()
    done = 0
    try:
        for case in range(cases):
            if budget_s is not None and time.perf_counter() - start > budget_s:
                break
            name, data, crc_valid = mutate(rng, rng.choice(seeds))
            status, detail, elapsed = worker.run(data, timeout)
            if status in ("hang", "crash"):
                worker.kill()
                worker = _Worker(model, pretrained, memory_gb, max_pixels)
            if status == "decoded" and not crc_valid:
                status = "decoded-after-byte-mutation"
            slowest = max(slowest, elapsed)
            counts[status] = counts.get(status, 0) + 1
            by_mutation.setdefault(name, {}).setdefault(status, 0)
            by_mutation[name][status] += 1
            if status in BUGS and len(bugs) < 20:
                bugs.append({"case": case, "mutation": name, "status": status, "detail": detail})
            done += 1
    finally:
        worker.close()
    return {
        "model": model, "pretrained": pretrained, "cases": done, "seed": seed, "timeout_s": timeout,
        "memory_gb": memory_gb, "max_pixels": max_pixels, "seconds": round(time.perf_counter() - start, 1), "slowest_case_s": round(slowest, 3),
        "outcomes": counts, "bugs": {k: counts.get(k, 0) for k in BUGS}, "by_mutation": by_mutation, "examples": bugs,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gnn_lic.codec.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="glic", help="registered model name (default glic)")
    p.add_argument("--pretrained", action="store_true", help="fuzz the shipped 'small' weights instead of seeded 'tiny'")
    p.add_argument("--cases", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per case before it counts as a hang")
    p.add_argument("--memory-gb", type=float, default=8.0, help="address-space limit of the worker (0: none)")
    p.add_argument("--budget", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--max-pixels", type=int, default=1 << 18,
                   help="the worker's GNN_LIC_MAX_PIXELS: larger declared images must fail fast (default 2**18)")
    args = p.parse_args(argv)
    report = run_fuzz(args.model, args.cases, args.seed, args.timeout, args.memory_gb, args.pretrained, args.budget,
                      args.max_pixels)
    print(json.dumps(report, indent=1))
    return 1 if any(report["bugs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
