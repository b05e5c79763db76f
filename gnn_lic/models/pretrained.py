"""Shipped (pretrained) weights.

Weights live in ``gnn_lic/weights/`` (or in the folder named by the environment variable
``GNN_LIC_WEIGHTS_DIR``, which takes precedence; handy for tests and local installs).
``index.json`` there maps ``"{name}-{size}"`` to the file name of a checkpoint written by
:func:`gnn_lic.models.checkpoint.save_checkpoint`, e.g.::

    {"glic-small": "glic-small.pt"}

The folder and the index may be missing: then no weights are shipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import torch

from gnn_lic.codec.errors import CheckpointError, NoPretrainedWeightsError
from gnn_lic.codec.fingerprint import canonical_config_json
from gnn_lic.models.checkpoint import load_state_into, read_checkpoint

__all__ = ["WEIGHTS_DIR_ENV", "weights_dir", "available_pretrained", "pretrained_path", "load_pretrained"]

WEIGHTS_DIR_ENV = "GNN_LIC_WEIGHTS_DIR"
INDEX_NAME = "index.json"


def weights_dir() -> Path:
    """The folder searched for shipped weights."""
    override = os.environ.get(WEIGHTS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "weights"


def _read_index() -> Dict[str, str]:
    index = weights_dir() / INDEX_NAME
    if not index.is_file():
        return {}
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"the weights index '{index}' is unreadable: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise CheckpointError(f"the weights index '{index}' must map \"name-size\" to a file name")
    for key, fname in data.items():
        if Path(fname).name != fname or fname in ("", ".", ".."):
            raise CheckpointError(f"the weights index '{index}' lists an invalid file name {fname!r} for {key!r}")
    return data


def pretrained_path(name: str, size: str) -> Optional[Path]:
    """Path of the shipped checkpoint for ``name``/``size``, or None when none is listed."""
    fname = _read_index().get(f"{name}-{size}")
    return None if fname is None else weights_dir() / fname


def available_pretrained() -> List[str]:
    """Sorted ``"{name}-{size}"`` keys whose checkpoint file is present."""
    folder = weights_dir()
    return sorted(key for key, fname in _read_index().items() if (folder / fname).is_file())


def _no_weights(name: str, size: str) -> NoPretrainedWeightsError:
    return NoPretrainedWeightsError(
        f"no trained weights are shipped for model '{name}' size '{size}'; "
        "pass --checkpoint CKPT (train one with experiments/run.py)"
    )


def load_pretrained(net: torch.nn.Module) -> torch.nn.Module:
    """Load the shipped weights for ``net.model_name``/``net.model_size`` into ``net``.

    The shipped checkpoint's model configuration must equal ``net.model_config``.  The
    model is then updated (``update(force=True)``) and put in eval mode.  Raises
    :class:`NoPretrainedWeightsError` when no weights are shipped.
    """
    name = getattr(net, "model_name", None)
    size = getattr(net, "model_size", None)
    path = pretrained_path(name, size)
    if path is None:
        raise _no_weights(name, size)
    if not path.is_file():
        raise CheckpointError(f"the weights index lists '{path.name}' for '{name}-{size}' but the file is missing")
    ckpt = read_checkpoint(path, map_location="cpu")
    if canonical_config_json(dict(ckpt["model_config"])) != canonical_config_json(net):
        raise CheckpointError(
            f"the shipped weights '{path.name}' were trained with configuration "
            f"{canonical_config_json(dict(ckpt['model_config'])).decode()}, "
            f"not {canonical_config_json(net).decode()}"
        )
    load_state_into(net, ckpt["state_dict"], source=f"shipped weights '{path.name}'")
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        net.to("cpu")
    if hasattr(net, "update"):
        net.update(force=True)
    net.to(device)
    net.eval()
    return net
