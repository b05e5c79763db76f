"""Saving and loading model checkpoints.

A checkpoint is a ``torch.save`` file holding one dict::

    {
        "format": "gnn_lic-checkpoint",
        "version": 2,
        "model_config": net.model_config,   # rebuilds the model with create_model
        "state_dict": net.state_dict(),
        **extra,                            # e.g. step, optimizer state, metrics
    }

:func:`save_checkpoint` and :func:`export_checkpoint` write it atomically
(:func:`gnn_lic.utils.atomic_write`), so an interrupted save never leaves a half-written
checkpoint.  ``extra`` values are converted
to types that ``torch.load(weights_only=True)`` accepts (numpy scalars -> Python numbers,
numpy arrays -> tensors, paths -> str, ``argparse.Namespace`` -> dict); anything else is
refused at save time, so every checkpoint can be loaded without unpickling arbitrary code.

Versions: a checkpoint records the options given to ``create_model``, not the preset they
were applied to, so the version says which presets it means. Version 1 was written before
glic-family "small" models gained the wavelet branch; :func:`read_checkpoint` spells out the
preset values that changed since a file's version
(:func:`~gnn_lic.models.registry.upgrade_config`), so older files rebuild the model they hold.

:func:`load_checkpoint` rebuilds the model from the registry
(:func:`gnn_lic.models.registry.build_registered` with ``cfg["name"]``, ``cfg["size"]``
and the other keys), loads the state dict
strictly, keeps the entropy coder's tables when the file stores them (shipped files, see
:func:`export_checkpoint`) or else calls ``net.update(force=True)`` (on the CPU, so the CDF
tables and therefore the model fingerprint do not depend on the device), and ``net.eval()``.
Every problem raises a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import torch

from gnn_lic.errors import CheckpointError
from gnn_lic.models.base import upgrade_state_dict
from gnn_lic.models.registry import build_registered, registered_models, upgrade_config
from gnn_lic.utils import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "READABLE_VERSIONS",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "build_model",
    "load_state_into",
    "export_checkpoint",
    "finish_loading",
    "is_table_key",
    "TABLE_KEYS",
]

CHECKPOINT_FORMAT = "gnn_lic-checkpoint"
CHECKPOINT_VERSION = 2
#: versions :func:`read_checkpoint` reads (older ones have their configuration upgraded)
READABLE_VERSIONS = (1, 2)
_RESERVED = ("format", "version", "model_config", "state_dict", "tables")
#: buffers of CompressAI's entropy models that hold the entropy coder's tables
TABLE_KEYS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def is_table_key(key: str) -> bool:
    """Whether a state-dict key names an entropy-coder table buffer (:data:`TABLE_KEYS`)."""
    return key.rsplit(".", 1)[-1] in TABLE_KEYS


def finish_loading(net: torch.nn.Module, ckpt: Mapping[str, Any]) -> None:
    """Make a freshly loaded model ready to code: keep the entropy coder's tables of a file that
    stores them (``ckpt["tables"]``, written by :func:`export_checkpoint`), else build them
    (``update(force=True)``, on the CPU). Tables read from the file make decoding independent of
    this machine's float math (``update`` computes them with ``exp``, ``erfc``, ...)."""
    if ckpt.get("tables") is True or not hasattr(net, "update"):
        return
    net.update(force=True)

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------ saving


def _safe_value(value: Any, where: str) -> Any:
    """Convert ``value`` to types that torch.load(weights_only=True) accepts, or refuse."""
    module = type(value).__module__ or ""
    if module.startswith("numpy"):  # before the float check: np.float64 subclasses float
        import numpy as np  # noqa: PLC0415

        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value, copy=True))
        if isinstance(value, np.generic):
            return value.item()
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return value
    for base in (bool, int, float, complex, str, bytes):  # subclasses (IntEnum, ...) -> base type
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (torch.Tensor, torch.Size, torch.dtype, torch.device)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, argparse.Namespace):
        return _safe_value(vars(value), where)
    if isinstance(value, collections.OrderedDict):
        return collections.OrderedDict((k, _safe_value(v, f"{where}[{k!r}]")) for k, v in value.items())
    if isinstance(value, dict):
        return {_safe_value(k, f"{where} key"): _safe_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_safe_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise CheckpointError(
        f"cannot store {where} of type {type(value).__name__} in a checkpoint "
        "(use plain Python numbers, strings, lists, dicts or tensors)"
    )


def save_checkpoint(path: PathLike, net: torch.nn.Module, **extra: Any) -> Path:
    """Atomically save ``net`` (config + state dict) and ``extra`` to ``path``.

    Any file name works (``.pt``, ``.pth.tar``, ...); missing parent folders are created
    and an existing file is replaced.  Returns the path.
    """
    cfg = getattr(net, "model_config", None)
    if not isinstance(cfg, dict) or "name" not in cfg or "size" not in cfg:
        raise CheckpointError(
            "the model has no 'model_config' with 'name' and 'size'; build it with gnn_lic.models.create_model"
        )
    for key in extra:
        if key in _RESERVED:
            raise CheckpointError(f"extra checkpoint key {key!r} is reserved")
    payload: Dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": _safe_value(dict(cfg), "model_config"),
        "state_dict": net.state_dict(),
    }
    for key, value in extra.items():
        payload[key] = _safe_value(value, f"extra[{key!r}]")

    return _write(path, payload)


def _write(path: PathLike, payload: Dict[str, Any]) -> Path:
    """``torch.save(payload)`` to ``path`` atomically, creating missing folders; one-line errors."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create folder '{folder}': {exc.strerror or exc}") from None
    try:
        atomic_write(p, lambda fh: torch.save(payload, fh))
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint '{p}': {exc.strerror or exc}") from None
    return p


# ----------------------------------------------------------------------------- loading


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).replace("\x1b[1m", "").replace("\x1b[0m", "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_unsafe(exc: BaseException) -> str:
    msg = str(exc)
    for line in msg.splitlines():
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return _one_line(line.split("WeightsUnpickler error:")[-1])
    return _one_line(msg.splitlines()[0] if msg else type(exc).__name__)


def read_checkpoint(path: PathLike, map_location: Any = "cpu", trusted: bool = False) -> Dict[str, Any]:
    """Load and validate a checkpoint dict without building the model.

    Its ``model_config`` is upgraded to this version's presets (:func:`~gnn_lic.models.registry.upgrade_config`);
    ``version`` stays the file's. ``torch.load`` runs with ``weights_only=True`` unless ``trusted=True`` (which unpickles
    arbitrary objects: only for files from a trusted source).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    if p.is_dir():
        raise CheckpointError(f"checkpoint '{p}' is a folder, not a file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint '{p}': {exc.strerror or exc}") from None
    is_zip = head == b"PK\x03\x04"
    if not (is_zip or head[:1] == b"\x80"):  # torch zip archive or legacy pickle
        raise CheckpointError(f"'{p}' is not a PyTorch checkpoint file")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if is_zip and "Weights only load failed" in str(exc) and "Unsupported global" in str(exc):
            raise CheckpointError(
                f"checkpoint '{p}' contains objects that cannot be loaded safely ({_describe_unsafe(exc)}); "
                "load it with trusted=True only if you trust its source"
            ) from None
        raise CheckpointError(f"'{p}' is not a readable PyTorch checkpoint file") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise CheckpointError(f"'{p}' is not a readable PyTorch checkpoint file ({_one_line(exc, 120)})") from None

    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{p}' holds a {type(obj).__name__}, not a gnn_lic checkpoint")
    if "format" not in obj:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(
                f"'{p}' holds a plain state_dict, not a gnn_lic checkpoint (it has no model configuration); "
                "save models with gnn_lic.models.checkpoint.save_checkpoint"
            )
        if "state_dict" in obj:
            raise CheckpointError(
                f"'{p}' is a training checkpoint without a gnn_lic model configuration "
                "(no 'format'/'model_config' keys); save models with gnn_lic.models.checkpoint.save_checkpoint"
            )
        raise CheckpointError(f"'{p}' is not a gnn_lic checkpoint (no 'format' key)")
    if obj["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"'{p}' has unknown checkpoint format {obj['format']!r}")
    version = obj.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"'{p}' has checkpoint version {version!r}; this gnn_lic reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    cfg = obj.get("model_config")
    if (
        not isinstance(cfg, Mapping)
        or not isinstance(cfg.get("name"), str)
        or not isinstance(cfg.get("size"), str)
        or not all(isinstance(k, str) for k in cfg)
    ):
        raise CheckpointError(f"'{p}' has no valid 'model_config' (a dict with str 'name' and 'size')")
    sd = obj.get("state_dict")
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise CheckpointError(f"'{p}' has no valid 'state_dict'")
    out = dict(obj)
    out["model_config"] = upgrade_config(cfg, version)
    return out


def build_model(config: Mapping[str, Any], source: str = "checkpoint") -> torch.nn.Module:
    """The model of ``config`` from the registry (random weights), with one-line errors."""
    cfg = dict(config)
    name = cfg.pop("name")
    size = cfg.pop("size")
    cfg.pop("pretrained", None)
    if name not in registered_models():
        known = ", ".join(registered_models()) or "none"
        raise CheckpointError(f"{source} holds model '{name}', which is not registered (known models: {known})")
    try:
        return build_registered(name, size=size, **cfg)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot build model '{name}' size '{size}' from {source}: {_one_line(exc)}") from None


def _examples(keys: list, n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (", ..." if len(keys) > n else "")


def load_state_into(net: torch.nn.Module, state_dict: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Strictly load ``state_dict`` into ``net``; one-line :class:`CheckpointError` if it does not fit.

    Keys of earlier module layouts are renamed first (:func:`~gnn_lic.models.base.upgrade_state_dict`).
    """
    state_dict = upgrade_state_dict(net, state_dict)
    label = f"model '{getattr(net, 'model_name', type(net).__name__)}' size '{getattr(net, 'model_size', '?')}'"
    own = net.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_examples(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
        raise CheckpointError(f"the state dict in {source} does not fit {label}: " + "; ".join(parts))
    try:
        net.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        msg = str(exc)
        mismatches = [line.strip() for line in msg.splitlines() if "size mismatch" in line]
        detail = f"{len(mismatches)} shape mismatches ({_one_line(mismatches[0], 160)})" if mismatches else _one_line(msg)
        raise CheckpointError(f"the state dict in {source} does not fit {label}: {detail}") from None


def _target_device(map_location: Any):
    if isinstance(map_location, torch.device):
        return map_location
    if isinstance(map_location, str):
        try:
            return torch.device(map_location)
        except RuntimeError:
            return None
    return None


def load_checkpoint(
    path: PathLike, map_location: Any = "cpu", trusted: bool = False
) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the model saved in ``path``; return ``(net, checkpoint_dict)``.

    The model is updated (``update(force=True)``, computed on the CPU), put in eval mode
    and moved to ``map_location`` when that is a device (string or ``torch.device``).
    """
    p = Path(path)
    ckpt = read_checkpoint(p, map_location=map_location, trusted=trusted)
    net = build_model(ckpt["model_config"], source=f"checkpoint '{p}'")
    load_state_into(net, ckpt["state_dict"], source=f"checkpoint '{p}'")
    finish_loading(net, ckpt)
    net.eval()
    device = _target_device(map_location)
    if device is not None and device.type != "cpu":
        net.to(device)
    return net, ckpt


#: largest magnitude float16 holds; parameters beyond it stay float32
_HALF_MAX = 65504.0


def export_checkpoint(src: PathLike, dst: PathLike, half: bool = True, **metadata: Any) -> Path:
    """Write a slim copy of checkpoint ``src`` for shipping: model config, state dict and ``metadata``.

    Optimizer state, step counters and everything else of a training checkpoint are
    dropped. With ``half``, the model's *parameters* are stored as float16 (halving the
    file) unless a value exceeds the float16 range; buffers keep their dtype. Loading casts
    the parameters back to float32, and the codec fingerprints the loaded weights, so
    encoder and decoder agree bit for bit. The entropy coder's tables are built here
    (``update(force=True)`` on the stored parameters) and stored with ``tables: True``, so
    loading reads them instead of computing them with the loading machine's float math.
    """
    ckpt = read_checkpoint(src)
    net = build_model(ckpt["model_config"], source=f"checkpoint '{src}'")
    params = {name for name, _ in net.named_parameters()}
    state = {}
    for key, value in ckpt["state_dict"].items():
        if (half and key in params and value.is_floating_point()
                and value.numel() and bool(torch.isfinite(value).all()) and float(value.abs().max()) <= _HALF_MAX):
            value = value.half()
        state[key] = value
    load_state_into(net, state, source=f"checkpoint '{src}'")  # it still fits the model
    tables = hasattr(net, "update")
    if tables:
        net.update(force=True)
        seen: Dict[Tuple[str, Tuple[int, ...], bytes], torch.Tensor] = {}
        for key, value in net.state_dict().items():
            if is_table_key(key):  # equal tables (one scale table per entropy model) share one stored copy
                value = value.detach().cpu().contiguous()
                state[key] = seen.setdefault((str(value.dtype), tuple(value.shape), value.numpy().tobytes()),
                                             value.clone())
    payload: Dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": ckpt["model_config"],
        "state_dict": state,
    }
    if tables:
        payload["tables"] = True
    for key, value in metadata.items():
        if key in _RESERVED:
            raise CheckpointError(f"metadata key {key!r} is reserved")
        payload[key] = _safe_value(value, f"metadata[{key!r}]")
    return _write(dst, payload)
