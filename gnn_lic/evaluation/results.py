"""Rate-distortion results in CompressAI's JSON format.

A results document looks like::

    {"name": "jpeg", "description": "...",
     "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...],
                 "ms-ssim-db": [...]   # optional
                 # any further per-point lists (e.g. "quality", "encoding_time")
                },
     "per_image": [ {"<image name>": {"bpp": .., "psnr-rgb": .., ...}, ...}, ... ]}

The lists in ``results`` line up point by point (one entry per rate point). The
optional top-level ``per_image`` list holds, for each rate point (same order), the
per-image metrics the averages were computed from. It is kept outside ``results`` so
that every value of ``results`` stays a plain list of numbers, as CompressAI's own
readers expect.

Functions here accept either a whole document or just its ``results`` mapping where
they only need the numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from gnn_lic.utils import atomic_write

from .metrics import ms_ssim_db

__all__ = [
    "make_results",
    "save_results",
    "load_results",
    "results_of",
    "get_metric",
    "sort_results",
    "shared_root",
    "load_reference",
    "METRIC_KEYS",
    "to_json",
    "write_json",
]

#: Known metric keys and their axis labels.
METRIC_KEYS = {
    "psnr-rgb": "PSNR (RGB) [dB]",
    "ms-ssim-rgb": "MS-SSIM (RGB)",
    "ms-ssim-db": "MS-SSIM (RGB) [dB]",
}


def to_json(v: Any) -> Any:
    """Make values JSON-serialisable (numpy scalars/arrays, paths, non-finite floats)."""
    if isinstance(v, Mapping):
        return {str(k): to_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, np.ndarray):
        return [to_json(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        # nan/inf stay floats: json.dump writes them as NaN/Infinity tokens (as
        # CompressAI's own json.dump calls do) and json.load reads them back.
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON with a final newline, atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, (json.dumps(to_json(obj), indent=2) + "\n").encode("utf-8"))


def make_results(
    name: str,
    bpp: Iterable[float],
    psnr: Iterable[float] | None = None,
    ms_ssim: Iterable[float] | None = None,
    description: str = "",
    per_image: list[dict] | None = None,
    add_ms_ssim_db: bool = True,
    **extra: Iterable[Any],
) -> dict:
    """Build a results document; ``extra`` lists are stored under ``results`` too.

    ``ms-ssim-db`` is added (``-10*log10(1 - ms-ssim)``) when ``ms_ssim`` is given
    and ``add_ms_ssim_db`` is true.
    """
    res: dict[str, list] = {"bpp": [float(x) for x in bpp]}
    n = len(res["bpp"])
    if psnr is not None:
        res["psnr-rgb"] = [float(x) for x in psnr]
    if ms_ssim is not None:
        res["ms-ssim-rgb"] = [float(x) for x in ms_ssim]
        if add_ms_ssim_db:
            res["ms-ssim-db"] = [float(x) for x in ms_ssim_db(res["ms-ssim-rgb"])]
    for k, v in extra.items():
        res[k] = list(to_json(list(v)))
    for k, v in res.items():
        if len(v) != n:
            raise ValueError(f"results[{k!r}] has {len(v)} entries, bpp has {n}")
    doc = {"name": name, "description": description, "results": res}
    if per_image is not None:
        if len(per_image) != n:
            raise ValueError(f"per_image has {len(per_image)} entries, bpp has {n}")
        doc["per_image"] = to_json(per_image)
    return doc


def results_of(doc: Mapping) -> Mapping:
    """The ``results`` mapping of a document (or ``doc`` itself if it is one)."""
    if "results" in doc and isinstance(doc["results"], Mapping):
        return doc["results"]
    return doc


def _validate(doc: Mapping, where: str = "results") -> None:
    res = results_of(doc)
    if "bpp" not in res:
        raise ValueError(f"{where}: no 'bpp' list")
    n = len(res["bpp"])
    for k, v in res.items():
        if isinstance(v, list) and len(v) != n:
            raise ValueError(f"{where}: results[{k!r}] has {len(v)} entries, bpp has {n}")


def save_results(doc: Mapping, path: str | os.PathLike) -> Path:
    """Write a results document as indented JSON (parent folders are created)."""
    _validate(doc, str(path))
    return write_json(doc, path)


def load_results(path: str | os.PathLike) -> dict:
    """Read a results document; checks that the lists in ``results`` line up.

    A file without a ``name`` gets the file stem as name.
    """
    path = Path(path)
    with open(path) as f:
        doc = json.load(f)
    if "results" not in doc:
        raise ValueError(f"{path}: not a CompressAI results file (no 'results' key)")
    _validate(doc, str(path))
    doc.setdefault("name", path.stem)
    doc.setdefault("description", "")
    return doc


def get_metric(doc: Mapping, metric: str) -> np.ndarray:
    """One per-point list as a float array.

    ``ms-ssim-db`` is derived from ``ms-ssim-rgb`` when the document lacks it (and
    CompressAI's alternative key ``ms-ssim-db-rgb`` is accepted). Raises ``KeyError``
    when the metric is not available.
    """
    res = results_of(doc)
    if metric in res:
        return np.asarray(res[metric], dtype=np.float64)
    if metric == "ms-ssim-db":
        if "ms-ssim-db-rgb" in res:
            return np.asarray(res["ms-ssim-db-rgb"], dtype=np.float64)
        if "ms-ssim-rgb" in res:
            return np.asarray(ms_ssim_db(res["ms-ssim-rgb"]), dtype=np.float64)
    if metric == "psnr" and "psnr-rgb" in res:
        return np.asarray(res["psnr-rgb"], dtype=np.float64)
    raise KeyError(f"metric {metric!r} not in results (has: {sorted(res)})")


def sort_results(doc: Mapping, key: str = "bpp") -> dict:
    """A copy of ``doc`` with all per-point lists (and ``per_image``) sorted by ``key``."""
    res = results_of(doc)
    order = np.argsort(np.asarray(res[key], dtype=np.float64), kind="stable")
    new_res = {
        k: ([v[i] for i in order] if isinstance(v, list) and len(v) == len(order) else v)
        for k, v in res.items()
    }
    if "results" in doc:
        out = dict(doc)
        out["results"] = new_res
        if isinstance(doc.get("per_image"), list) and len(doc["per_image"]) == len(order):
            out["per_image"] = [doc["per_image"][i] for i in order]
        return out
    return new_res


def shared_root() -> Path | None:
    """The folder named by ``$GNN_LIC_SHARED`` (holding ``reference/<dataset>/*.json``), or None."""
    env = os.environ.get("GNN_LIC_SHARED")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    return None


def load_reference(dataset: str = "kodak", root: str | os.PathLike | None = None) -> dict[str, dict]:
    """Published reference curves for ``dataset``: ``{name: results document}``.

    Reads ``<root>/<dataset>/*.json`` (``_meta.json`` and other underscore files
    skipped). ``root`` defaults to ``shared_root() / "reference"``. Keys are the
    file stems (e.g. ``"vtm"``, ``"glic"``).
    """
    if root is None:
        sr = shared_root()
        if sr is None:
            raise FileNotFoundError("no reference folder: set GNN_LIC_SHARED or pass root=")
        root = sr / "reference"
    folder = Path(root) / dataset
    if not folder.is_dir():
        raise FileNotFoundError(f"no reference folder {folder}")
    out: dict[str, dict] = {}
    for p in sorted(folder.glob("*.json")):
        if p.name.startswith("_"):
            continue
        out[p.stem] = load_results(p)
    if not out:
        raise FileNotFoundError(f"no reference JSON files in {folder}")
    return out
