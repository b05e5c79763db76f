"""Shipped (pretrained) weights, keyed by ``(name, size, quality)`` as in CompressAI's zoo.

Weights live in ``gnn_lic/weights/`` (or in the folder named by the environment variable
``GNN_LIC_WEIGHTS_DIR``, which takes precedence; handy for tests and local installs).
``index.json`` there lists them, one entry per checkpoint file (written by
:func:`gnn_lic.models.checkpoint.export_checkpoint`), with the record of how it was made::

    {"format": "gnn_lic-weights-index", "version": 2,
     "weights": [
       {"name": "glic", "size": "small", "metric": "mse", "qualities": [4], "lambdas": [0.013],
        "file": "glic-small.pt", "sha256": "0ebc...",
        "command": "python experiments/run.py --model glic ...", "data": "the training images",
        "metrics": {"data": "the test images", "bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...]},
        "details": "glic-small.json"}]}

An entry serves one or more qualities: a fixed-rate checkpoint one, a variable-rate model
several (``"qualities": [1, 2, 3, 4, 5, 6]``); ``lambdas`` and every list of ``metrics``
line up with ``qualities``. Quality ``q`` of a metric is the ``q``-th rate point (from 1,
lowest rate) of :data:`QUALITY_LAMBDAS`, the GLIC paper's six lambdas (Sec. 4.1.1), as
CompressAI numbers its zoo's rate points; :func:`quality_of` maps a trained lambda to it.
``details`` optionally names a JSON file beside the weights holding the rest of the
training record (the resolved training configuration, per-image results, notes).

Every load checks the file's sha256 against the index, and the checkpoint's model
configuration against the model being loaded. The folder and the index may be missing:
then no weights are shipped. An index of the first format (a mapping ``"name-size"`` to
a file name, with no quality or checksum) is refused with a one-line error that names
its converter, ``python experiments/ship_weights.py --upgrade-index DIR``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from gnn_lic.errors import CheckpointError, NoPretrainedWeightsError
from gnn_lic.models.checkpoint import finish_loading, load_state_into, read_checkpoint
from gnn_lic.models.registry import canonical_config_json
from gnn_lic.utils import atomic_write, module_device

__all__ = [
    "WEIGHTS_DIR_ENV",
    "INDEX_NAME",
    "NOT_OPTIONS",
    "QUALITY_LAMBDAS",
    "WeightsEntry",
    "weights_dir",
    "quality_of",
    "read_index",
    "write_index",
    "shipped_weights",
    "find_weights",
    "file_sha256",
    "load_pretrained",
]

WEIGHTS_DIR_ENV = "GNN_LIC_WEIGHTS_DIR"
INDEX_NAME = "index.json"
INDEX_FORMAT = "gnn_lic-weights-index"
INDEX_VERSION = 2

#: rate points of each metric, lowest rate first: quality q is entry q - 1 (GLIC Sec. 4.1.1)
QUALITY_LAMBDAS: Dict[str, Tuple[float, ...]] = {
    "mse": (0.0017, 0.0035, 0.0067, 0.0130, 0.0250, 0.050),
    "ms-ssim": (3.0, 5.0, 8.0, 16.0, 36.0, 64.0),
}
#: largest relative distance from a ladder lambda that still counts as its quality
#: (GABIC's 0.0483 is GLIC's 0.050: the two papers' top MSE points)
_LAMBDA_TOLERANCE = 0.05
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: keys of a model configuration that an entry's ``options`` never holds: the entry says them otherwise
NOT_OPTIONS = ("name", "size", "rate_lambdas", "pretrained")


@dataclass(frozen=True)
class WeightsEntry:
    """One shipped checkpoint and its record (file, sha256, command, data, metrics)."""

    name: str
    size: str
    metric: str
    qualities: Tuple[int, ...]
    lambdas: Tuple[float, ...]
    file: str
    sha256: str
    command: str
    data: str
    metrics: Mapping[str, Any] = field(default_factory=dict)
    details: Optional[str] = None
    #: options the checkpoint was built with besides name, size and the rate trade-offs
    #: (e.g. ``{"wavelet": False}`` for a glic-small written before the preset gained the branch)
    options: Mapping[str, Any] = field(default_factory=dict)
    folder: Path = field(default=Path("."), compare=False)

    @property
    def path(self) -> Path:
        return self.folder / self.file

    @property
    def variable_rate(self) -> bool:
        """Whether the checkpoint is one variable-rate model serving all its qualities."""
        return len(self.qualities) > 1

    @property
    def model_kwargs(self) -> Dict[str, Any]:
        """What ``create_model`` needs besides name and size: the entry's options and the trade-offs
        of a variable-rate model."""
        rates = {"rate_lambdas": list(self.lambdas)} if self.variable_rate else {}
        return {**self.options, **rates}

    @property
    def record(self) -> Dict[str, Any]:
        """How the weights were made and what they reach: file, sha256, command, data, metrics."""
        return {"file": self.file, "sha256": self.sha256, "command": self.command, "data": self.data,
                "metrics": dict(self.metrics)}

    def to_json(self) -> Dict[str, Any]:
        """The entry as it is written in the index."""
        out = asdict(self)
        out.pop("folder")
        out["qualities"], out["lambdas"], out["metrics"] = list(self.qualities), list(self.lambdas), dict(self.metrics)
        out["options"] = dict(self.options)
        if self.details is None:
            out.pop("details")
        if not self.options:
            out.pop("options")
        return out


def weights_dir() -> Path:
    """The folder searched for shipped weights."""
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "weights"


def quality_of(lmbda: float, metric: str = "mse") -> int:
    """The quality (1-based) whose lambda in :data:`QUALITY_LAMBDAS` is within 5 % of ``lmbda``."""
    if metric not in QUALITY_LAMBDAS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(QUALITY_LAMBDAS)}")
    for q, ref in enumerate(QUALITY_LAMBDAS[metric], start=1):
        if math.isclose(float(lmbda), ref, rel_tol=_LAMBDA_TOLERANCE):
            return q
    raise ValueError(f"lambda {lmbda} is none of the {metric} rate points {list(QUALITY_LAMBDAS[metric])}; "
                     "give the quality explicitly")


def _file_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or Path(value).name != value or value in ("", ".", ".."):
        raise CheckpointError(f"{where} lists an invalid file name {value!r}")
    return value


def _entry(raw: Any, where: str, folder: Path) -> WeightsEntry:
    """One index entry, validated; a one-line :class:`CheckpointError` names what is wrong."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where} is not an object")
    missing = [k for k in ("name", "size", "metric", "qualities", "file", "sha256", "command", "data") if k not in raw]
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}")
    for key in ("name", "size", "command", "data"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise CheckpointError(f"{where}: '{key}' must be a non-empty string")
    metric = raw["metric"]
    if metric not in QUALITY_LAMBDAS:
        raise CheckpointError(f"{where}: unknown metric {metric!r} (known: {', '.join(QUALITY_LAMBDAS)})")
    ladder = QUALITY_LAMBDAS[metric]
    qualities = raw["qualities"]
    if (not isinstance(qualities, list) or not qualities or len(set(qualities)) != len(qualities)
            or not all(type(q) is int and 1 <= q <= len(ladder) for q in qualities)):
        raise CheckpointError(f"{where}: 'qualities' must be distinct integers 1..{len(ladder)}")
    lambdas = raw.get("lambdas", [ladder[q - 1] for q in qualities])
    if (not isinstance(lambdas, list) or len(lambdas) != len(qualities)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in lambdas)):
        raise CheckpointError(f"{where}: 'lambdas' must be one number per quality")
    if not isinstance(raw["sha256"], str) or not _SHA256.fullmatch(raw["sha256"]):
        raise CheckpointError(f"{where}: 'sha256' must be 64 lowercase hex digits")
    metrics = raw.get("metrics", {})
    if not isinstance(metrics, Mapping):
        raise CheckpointError(f"{where}: 'metrics' must be an object")
    details = raw.get("details")
    options = raw.get("options", {})
    if not isinstance(options, Mapping) or any(k in options for k in NOT_OPTIONS):
        raise CheckpointError(f"{where}: 'options' must be an object without {', '.join(NOT_OPTIONS)}")
    return WeightsEntry(
        name=raw["name"], size=raw["size"], metric=metric, qualities=tuple(qualities),
        lambdas=tuple(float(v) for v in lambdas), file=_file_name(raw["file"], where), sha256=raw["sha256"],
        command=raw["command"], data=raw["data"], metrics=dict(metrics),
        details=None if details is None else _file_name(details, where), options=dict(options), folder=folder,
    )


def read_index(folder: Optional[Path] = None) -> List[WeightsEntry]:
    """Every entry of the weights index of ``folder`` (default :func:`weights_dir`), as listed."""
    folder = Path(folder) if folder is not None else weights_dir()
    index = folder / INDEX_NAME
    if not index.is_file():
        return []
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"the weights index '{index}' is unreadable: {exc}") from None
    if isinstance(data, dict) and "format" not in data and all(isinstance(v, str) for v in data.values()):
        raise CheckpointError(
            f"the weights index '{index}' has the first format (\"name-size\": file, no quality or sha256); "
            f"convert it with: python experiments/ship_weights.py --upgrade-index {folder}"
        )
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT or not isinstance(data.get("weights"), list):
        raise CheckpointError(f"the weights index '{index}' is not a {INDEX_FORMAT} (with a 'weights' list)")
    if data.get("version") != INDEX_VERSION:
        raise CheckpointError(f"the weights index '{index}' has version {data.get('version')!r}; "
                              f"this gnn_lic reads version {INDEX_VERSION}")
    entries = [_entry(raw, f"entry {i} of the weights index '{index}'", folder) for i, raw in enumerate(data["weights"])]
    seen = set()
    for e in entries:
        for q in e.qualities:
            if (e.name, e.size, q) in seen:
                raise CheckpointError(f"the weights index '{index}' lists {e.name}-{e.size} quality {q} twice")
            seen.add((e.name, e.size, q))
    return entries


def write_index(entries: Sequence[WeightsEntry], folder: Path) -> Path:
    """Write ``entries`` (sorted by name, size, first quality) as the index of ``folder``, atomically."""
    ordered = sorted(entries, key=lambda e: (e.name, e.size, e.qualities[0]))
    doc = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "weights": [e.to_json() for e in ordered]}
    return atomic_write(Path(folder) / INDEX_NAME, (json.dumps(doc, indent=2) + "\n").encode("utf-8"))


def shipped_weights(name: Optional[str] = None, size: Optional[str] = None) -> List[WeightsEntry]:
    """Index entries whose file is present, optionally of one model ``name`` and/or ``size``."""
    return [e for e in read_index() if (name is None or e.name == name) and (size is None or e.size == size)
            and e.path.is_file()]


def find_weights(name: str, size: str, quality: Optional[float] = None) -> Tuple[WeightsEntry, Optional[float]]:
    """The entry serving ``(name, size, quality)`` and the quality it serves.

    Without ``quality`` the model's only shipped checkpoint is taken (then the quality is
    None for a variable-rate one: its own default). An integer quality must be on the
    ladder; a variable-rate checkpoint also serves any real quality between its lowest and
    highest. Raises :class:`NoPretrainedWeightsError` (one line, naming the qualities
    shipped) when no entry serves it, ``ValueError`` for a quality off the ladder.
    """
    entries = [e for e in read_index() if e.name == name and e.size == size]
    if not entries:
        raise NoPretrainedWeightsError(
            f"no trained weights are shipped for model '{name}' size '{size}'; "
            "pass --checkpoint CKPT (train one with experiments/run.py)"
        )
    served = sorted(q for e in entries for q in e.qualities)
    if quality is None:
        if len(entries) > 1:
            raise NoPretrainedWeightsError(
                f"model '{name}' size '{size}' ships weights for qualities {', '.join(map(str, served))}; "
                "choose one (quality=Q, --quality Q)")
        return entries[0], (None if entries[0].variable_rate else entries[0].qualities[0])
    top = max(len(v) for v in QUALITY_LAMBDAS.values())
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or not 1 <= quality <= top:
        raise ValueError(f"quality must be a number 1..{top}, got {quality!r}")
    for e in entries:
        if quality in e.qualities or (e.variable_rate and min(e.qualities) <= quality <= max(e.qualities)):
            return e, quality
    if float(quality).is_integer() or any(e.variable_rate for e in entries):
        raise NoPretrainedWeightsError(
            f"no shipped weights for model '{name}' size '{size}' at quality {quality:g} "
            f"(shipped qualities: {', '.join(map(str, served))})"
        )
    raise ValueError(f"quality {quality!r} is between the shipped fixed-rate qualities {served}: choose one of them")


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_pretrained(net: torch.nn.Module, quality: Optional[int] = None) -> torch.nn.Module:
    """Load the shipped weights for ``net.model_name``/``net.model_size`` at ``quality`` into ``net``.

    The file must match its sha256 in the index and its model configuration must equal
    ``net.model_config``. The entropy coder's tables are those stored in the file, or when it
    stores none built by ``update(force=True)`` on the CPU
    (:func:`~gnn_lic.models.checkpoint.finish_loading`); the model is put in eval mode on its device. One-line errors:
    :class:`NoPretrainedWeightsError` when nothing serves the request,
    :class:`CheckpointError` for a missing, altered or unfitting file.
    """
    entry, _ = find_weights(getattr(net, "model_name", None), getattr(net, "model_size", None), quality)
    path = entry.path
    key = f"{entry.name}-{entry.size}"
    if not path.is_file():
        raise CheckpointError(f"the weights index lists '{entry.file}' for '{key}' but the file is missing")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise CheckpointError(f"the shipped weights '{entry.file}' fail their sha256 check (index {entry.sha256[:12]}..., "
                              f"file {actual[:12]}...): the file is damaged or was replaced")
    ckpt = read_checkpoint(path, map_location="cpu")
    if canonical_config_json(dict(ckpt["model_config"])) != canonical_config_json(net):
        raise CheckpointError(
            f"the shipped weights '{entry.file}' were trained with configuration "
            f"{canonical_config_json(dict(ckpt['model_config'])).decode()}, "
            f"not {canonical_config_json(net).decode()}"
        )
    load_state_into(net, ckpt["state_dict"], source=f"shipped weights '{entry.file}'")
    device = module_device(net)
    if device.type != "cpu":
        net.to("cpu")
    finish_loading(net, ckpt)
    net.to(device)
    net.eval()
    return net
