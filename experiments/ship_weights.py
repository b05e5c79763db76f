"""Ship a trained checkpoint in ``gnn_lic/weights`` (used by ``pretrained=True`` and the CLI).

    python experiments/ship_weights.py RUN/lambda-0.013/checkpoints/best.pt \\
        --command "python experiments/run.py ..." --data ../shared/data/wikiphotos \\
        --results RUN/lambda-0.013/results/*.json

writes ``gnn_lic/weights/{name}-{size}.pt`` (float16 parameters, see
:func:`gnn_lic.models.checkpoint.export_checkpoint`), adds it to ``index.json`` and writes
``{name}-{size}.json`` next to it: the exact training command, data, training summary
and the evaluation results given with ``--results``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from gnn_lic.models.checkpoint import export_checkpoint, read_checkpoint
from gnn_lic.models.pretrained import INDEX_NAME, weights_dir

LIMIT_MB = 20.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="checkpoint written by experiments/run.py")
    ap.add_argument("--command", required=True, help="the exact training command")
    ap.add_argument("--data", required=True, help="training data (folder, with its attribution)")
    ap.add_argument("--results", nargs="*", default=[], help="CompressAI-format result JSON files to record")
    ap.add_argument("--notes", default="", help="free text recorded with the weights")
    ap.add_argument("--out", default=None, help="weights folder (default: gnn_lic/weights)")
    args = ap.parse_args(argv)

    ckpt = read_checkpoint(args.checkpoint)
    cfg = ckpt["model_config"]
    key = f"{cfg['name']}-{cfg['size']}"
    folder = Path(args.out) if args.out else weights_dir()
    dst = export_checkpoint(args.checkpoint, folder / f"{key}.pt")
    size_mb = dst.stat().st_size / 2**20
    if size_mb > LIMIT_MB:
        dst.unlink()
        print(f"error: {dst.name} is {size_mb:.1f} MB, over the {LIMIT_MB:.0f} MB limit", file=sys.stderr)
        return 1
    index_path = folder / INDEX_NAME
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    index[key] = dst.name
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    train = {k: ckpt[k] for k in ("step", "config", "metrics", "elapsed", "skipped") if k in ckpt}
    record = {
        "file": dst.name,
        "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
        "size_mb": round(size_mb, 2),
        "model_config": cfg,
        "command": args.command,
        "data": args.data,
        "training": train,
        "results": [json.loads(Path(r).read_text()) for r in args.results],
        "notes": args.notes,
    }
    (folder / f"{key}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"shipped {key}: {dst} ({size_mb:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
