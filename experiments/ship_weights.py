"""Ship a trained checkpoint in ``gnn_lic/weights`` (used by ``pretrained=True`` and the CLI).

    python experiments/ship_weights.py RUN/lambda-0.013/checkpoints/best.pt \\
        --command "python experiments/run.py ..." --data ../shared/data/wikiphotos \\
        --results RUN/lambda-0.013/results/*.json --results-data ../shared/data/kodak

writes ``gnn_lic/weights/{name}-{size}-q{quality}.pt`` (float16 parameters, see
:func:`gnn_lic.models.checkpoint.export_checkpoint`) and adds its entry to ``index.json``
(:mod:`gnn_lic.models.zoo`: qualities, file, sha256, command, data, metrics), replacing an
entry of the same model, size and quality. The quality is that of the checkpoint's lambda
(:func:`gnn_lic.models.zoo.quality_of`) unless ``--quality`` gives it (several for a
variable-rate model). ``{file stem}.json`` next to it holds the rest of the training record:
the model and training configuration and the evaluation results given with ``--results``.
The index's metrics name the images those results were measured on: ``--results-data``,
else the test folder of the training configuration (``data_test``), which is right only
when the results came from the training run itself.

    python experiments/ship_weights.py --upgrade-index gnn_lic/weights

converts an index of the first format (``{"name-size": file}``) in place, taking each
entry's quality, command, data and metrics from the record ``{name-size}.json`` beside it.
Bad arguments and inputs print one line and exit with status 2 (:mod:`gnn_lic.cli`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gnn_lic.cli import ArgumentParser, UsageError, run_main  # noqa: E402
from gnn_lic.errors import CheckpointError  # noqa: E402
from gnn_lic.evaluation.results import write_json  # noqa: E402
from gnn_lic.models.checkpoint import export_checkpoint, read_checkpoint  # noqa: E402
from gnn_lic.models.zoo import (  # noqa: E402
    INDEX_NAME,
    NOT_OPTIONS,
    QUALITY_LAMBDAS,
    WeightsEntry,
    file_sha256,
    quality_of,
    read_index,
    weights_dir,
    write_index,
)

LIMIT_MB = 20.0
#: keys of a first-format record that the index entry now holds
_MOVED = ("file", "sha256", "size_mb", "command", "data")


def _metrics(results: Sequence[Mapping], lambdas: Sequence[float], test_data: Optional[str]) -> Dict[str, Any]:
    """``{"data", "bpp", "psnr-rgb", "ms-ssim-rgb"}``, one value per lambda, from CompressAI-format
    results (the point whose ``lambda`` matches, or a document's only point); empty when any is missing."""
    out: Dict[str, Any] = {"data": test_data or "", "bpp": [], "psnr-rgb": [], "ms-ssim-rgb": []}
    for lmbda in lambdas:
        for doc in results:
            res = doc.get("results", {})
            points = res.get("lambda") or ([lmbda] if len(res.get("bpp", [])) == 1 else [])
            hits = [i for i, v in enumerate(points) if math.isclose(float(v), lmbda, rel_tol=1e-6)]
            if hits and all(k in res for k in ("bpp", "psnr-rgb")):
                for key in ("bpp", "psnr-rgb", "ms-ssim-rgb"):
                    out[key].append(res[key][hits[0]] if key in res else None)
                break
        else:
            return {}
    return out


def _rate(train: Mapping, qualities: Optional[List[int]]):
    """``(metric, qualities, lambdas)`` of a checkpoint: the given qualities, or its lambda's."""
    metric = train.get("metric", "mse")
    if metric not in QUALITY_LAMBDAS:
        raise UsageError(f"the checkpoint was trained for metric {metric!r}; the zoo knows {', '.join(QUALITY_LAMBDAS)}")
    if qualities:
        top = len(QUALITY_LAMBDAS[metric])
        if any(not 1 <= q <= top for q in qualities):
            raise UsageError(f"--quality must be 1..{top}")
        return metric, list(qualities), [QUALITY_LAMBDAS[metric][q - 1] for q in qualities]
    if "lmbda" not in train:
        raise UsageError("the checkpoint records no lambda: give its quality with --quality Q")
    try:
        return metric, [quality_of(train["lmbda"], metric)], [float(train["lmbda"])]
    except ValueError as exc:
        raise UsageError(f"{exc} (--quality Q)") from None


def _entry(cfg: Mapping, train: Mapping, file: Path, command: str, data: str, results: Sequence[Mapping],
           qualities: Optional[List[int]], details: Optional[str], results_data: Optional[str] = None) -> WeightsEntry:
    """The index entry of shipped file ``file`` of model ``cfg`` trained with ``train``."""
    metric, qualities, lambdas = _rate(train, qualities)
    options = {k: v for k, v in cfg.items() if k not in NOT_OPTIONS}
    return WeightsEntry(name=cfg["name"], size=cfg["size"], metric=metric, qualities=tuple(qualities),
                        lambdas=tuple(lambdas), file=file.name, sha256=file_sha256(file), command=command, data=data,
                        metrics=_metrics(results, lambdas, results_data or train.get("data_test")), details=details,
                        options=options, folder=file.parent)


def _merge(folder: Path, new: WeightsEntry) -> None:
    """Add ``new`` to the index of ``folder``, dropping entries it replaces (same file, or same model at a shared quality)."""
    kept = [e for e in read_index(folder) if e.file != new.file and not (
        (e.name, e.size) == (new.name, new.size) and set(e.qualities) & set(new.qualities))]
    write_index(kept + [new], folder)


def ship(args) -> int:
    ckpt = read_checkpoint(args.checkpoint)
    cfg = ckpt["model_config"]
    train = ckpt.get("config") or {}
    folder = Path(args.out) if args.out else weights_dir()
    _, q, _ = _rate(train, sorted(set(args.quality or [])))
    results = [json.loads(Path(r).read_text()) for r in args.results]
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{cfg['name']}-{cfg['size']}-q{q[0]}" + (f"-{q[-1]}" if len(q) > 1 else "")
    dst = export_checkpoint(args.checkpoint, folder / f"{stem}.pt")
    size_mb = dst.stat().st_size / 2**20
    if size_mb > LIMIT_MB:
        dst.unlink()
        raise UsageError(f"{dst.name} is {size_mb:.1f} MB, over the {LIMIT_MB:.0f} MB limit")
    training = {k: ckpt[k] for k in ("step", "config", "metrics", "elapsed", "skipped") if k in ckpt}
    write_json({"model_config": cfg, "training": training, "results": results, "notes": args.notes},
               folder / f"{stem}.json")
    entry = _entry(cfg, train, dst, args.command, args.data, results, q if args.quality else None, f"{stem}.json",
                   args.results_data)
    _merge(folder, entry)
    print(f"shipped {cfg['name']}-{cfg['size']} quality {', '.join(map(str, q))}: {dst} ({size_mb:.1f} MB)")
    return 0


def upgrade_index(folder: Path) -> List[WeightsEntry]:
    """Convert the first-format index of ``folder`` in place (see the module docstring)."""
    index = folder / INDEX_NAME
    try:
        old = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read '{index}': {exc}") from None
    if not isinstance(old, dict) or "format" in old or not all(isinstance(v, str) for v in old.values()):
        raise UsageError(f"'{index}' is not a first-format index (a mapping \"name-size\" -> file)")
    entries = []
    for key, fname in sorted(old.items()):
        path, record_path = folder / fname, folder / f"{key}.json"
        if not record_path.is_file():
            raise UsageError(f"'{record_path}' is missing: it holds the quality, command and data of {key}")
        record = json.loads(record_path.read_text())
        sha = file_sha256(path)
        if record.get("sha256", sha) != sha:
            raise CheckpointError(f"'{path}' does not match the sha256 in its record '{record_path.name}'")
        train = record.get("training", {}).get("config", {})
        entries.append(_entry(read_checkpoint(path)["model_config"], train, path, record["command"], record["data"],
                              record.get("results", []), None, record_path.name))
        write_json({k: v for k, v in record.items() if k not in _MOVED}, record_path)
    write_index(entries, folder)
    return entries


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = ArgumentParser(prog="ship_weights.py", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", help="checkpoint written by experiments/run.py")
    ap.add_argument("--command", help="the exact training command")
    ap.add_argument("--data", help="training data (folder, with its attribution)")
    ap.add_argument("--quality", type=int, nargs="+", help="qualities the checkpoint serves (default: from its lambda)")
    ap.add_argument("--results", nargs="*", default=[], help="CompressAI-format result JSON files to record")
    ap.add_argument("--results-data", help="the images --results were measured on (default: the training "
                    "configuration's test folder)")
    ap.add_argument("--notes", default="", help="free text recorded with the weights")
    ap.add_argument("--out", default=None, help="weights folder (default: gnn_lic/weights)")
    ap.add_argument("--upgrade-index", metavar="DIR", help="convert the first-format index of DIR and exit")

    def body() -> int:
        args = ap.parse_args(argv)
        if args.upgrade_index:
            entries = upgrade_index(Path(args.upgrade_index))
            print(f"converted {len(entries)} entries of {Path(args.upgrade_index) / INDEX_NAME}")
            return 0
        if not (args.checkpoint and args.command and args.data):
            raise UsageError("give CHECKPOINT, --command and --data (or --upgrade-index DIR)")
        return ship(args)

    return run_main(body, "ship_weights.py", expected=(CheckpointError, OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
