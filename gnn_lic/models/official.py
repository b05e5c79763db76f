"""Load the GLIC and GABIC authors' released checkpoints into gnn_lic models.

The authors' code (GLIC: ``glic_model.GLICModel``; GABIC: ``WinGraph_WA``) names
its modules differently and, for GLIC's graph aggregation, splits the
projections differently: its query projection and the key half of its key/value
projection form our ``qk``, the value half our ``phi``. :func:`convert_official`
maps every key and shape of such a state dict onto ``create_model(name,
size="paper", compat="official")``, which builds the authors' variant of every
graph block from the same graph API and layers, and refuses, naming the key,
anything it cannot map. Buffers the model computes itself (wavelet filters,
relative-position tables, masks) and the entropy coder's tables are not taken
from the file: they are rebuilt (``update(force=True)``).

>>> net = load_official("glic", "glic_0.013.pth")             # doctest: +SKIP
>>> net = load_official("gabic", torch.load("q2.pth.tar"))    # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from gnn_lic.errors import CheckpointError
from gnn_lic.models.checkpoint import TABLE_KEYS
from gnn_lic.models.factory import create_model

__all__ = ["OFFICIAL_MODELS", "official_state_dict", "convert_official", "load_official"]

#: registered names whose authors' checkpoints can be loaded
OFFICIAL_MODELS = ("glic", "gabic")

#: suffixes of buffers that are rebuilt, never read from an authors' file
_REBUILT = (
    "relative_coords_table", "relative_position_index",  # GLIC position tables
    "dwt.w_ll", "dwt.w_lh", "dwt.w_hl", "dwt.w_hh", "idwt.filters",  # Haar filters
    *TABLE_KEYS,  # entropy-coder tables
    "scale_bound", "likelihood_lower_bound.bound", "lower_bound_scale.bound", "target",
    "context_prediction.mask", "pedestal", "lower_bound.bound",
)  # fmt: skip

# (pattern, replacement) pairs applied in order; a replacement may be a function of the match
_Rule = Tuple[str, Union[str, Callable[[re.Match], str]]]


def _halve(m: re.Match) -> str:
    """``<seq>.<2i>.`` -> ``<seq>.<i>.``: the authors' ramps have activations at odd places."""
    i = int(m.group(2))
    if i % 2:
        raise KeyError("an odd index of a sequence whose odd entries have no parameters")
    return f"{m.group(1)}.{i // 2}."


_GTC = [  # GatedTransformCNN blocks (conv stages, h_a/h_s, channel context)
    (r"\.mixer\.conv1\.0\.", ".dwconv.body.0."),
    (r"\.mixer\.depth_conv\.", ".dwconv.body.2."),
    (r"\.mixer\.conv2\.", ".dwconv.body.3."),
    (r"\.mixer\.adaptor\.", ".dwconv.skip."),
    (r"\.norm2\.", ".norm."),
    (r"\.mlp\.project_in\.", ".ffn.proj_in."),
    (r"\.mlp\.project_out\.", ".ffn.proj_out."),
]

_GLIC_RULES: List[_Rule] = [
    (r"^g_a\.down(\d)\.", r"g_a.down.\1."),
    (r"^g_s\.up(\d)\.", r"g_s.up.\1."),
    (r"^g_a\.AuxT_enc\.(\d)\.", r"g_a.wavelet.\1."),
    (r"^g_s\.AuxT_dec\.(\d)\.", r"g_s.wavelet.\1."),
    (r"\.scaling_factors$", ".log_scale"),
    (r"\.OLP\.linear\.", ".proj.linear."),
    (r"^g_a\.g1\.(\d+)\.", r"g_a.blocks.0.\1."),
    (r"^g_s\.g3\.(\d+)\.", r"g_s.blocks.2.\1."),
    (r"^g_a\.g2\.residual_group\.blocks\.(\d+)\.", r"g_a.blocks.1.layers.\1."),
    (r"^g_a\.g3\.residual_group\.blocks\.(\d+)\.", r"g_a.blocks.2.layers.\1."),
    (r"^g_s\.g1\.residual_group\.blocks\.(\d+)\.", r"g_s.blocks.0.layers.\1."),
    (r"^g_s\.g2\.residual_group\.blocks\.(\d+)\.", r"g_s.blocks.1.layers.\1."),
    # GFA layers
    (r"(\.layers\.\d+)\.grapher\.logit_scale$", r"\1.conv.log_temperature"),
    (r"(\.layers\.\d+)\.grapher\.proj\.", r"\1.conv.out."),
    (r"(\.layers\.\d+)\.grapher\.cpb_mlp\.", r"\1.conv.cpb_mlp."),
    (r"(\.layers\.\d+)\.mlp\.project_in\.", r"\1.ffn.proj_in."),
    (r"(\.layers\.\d+)\.mlp\.conv\.", r"\1.ffn.dwconv."),
    (r"(\.layers\.\d+)\.mlp\.project_out\.", r"\1.ffn.proj_out."),
    # entropy model: ramps whose odd entries are activations
    (r"(channel_context\.y\d+)\.(\d+)\.", _halve),
    (r"(entropy_parameters)\.(\d+)\.", _halve),
    (r"(entropy_parameters\.\d+)\.mixer\.", r"\1.proj."),
]


def _gabic_branch_b(m: re.Match) -> str:
    return f".branch_b.{int(m.group(1)) - 1}.body."


_GABIC_RULES: List[_Rule] = [
    # the entropy model: CompressAI's hyperprior codec of hyper (h_a, EB, h_s) and slices (y)
    (r"^(h_a|entropy_bottleneck)\.", r"latent_codec.hyper.\1."),
    (r"^h_mean_s\.", "latent_codec.hyper.h_s.mean."),
    (r"^h_scale_s\.", "latent_codec.hyper.h_s.scale."),
    (r"^(cc_mean_transforms|cc_scale_transforms|lrp_transforms|gaussian_conditional)\.", r"latent_codec.y.\1."),
    (r"\.conv_a\.(\d)\.conv\.", r".branch_a.\1.body."),
    (r"\.conv_b\.0\.conv\.qkv\.", ".attn.theta_phi_g."),
    (r"\.conv_b\.0\.conv\.proj\.", ".attn.w_z."),
    (r"\.conv_b\.0\.conv\.lin_edge\.", ".attn.w_e."),
    (r"\.conv_b\.([1-3])\.conv\.", _gabic_branch_b),
    (r"\.conv_b\.4\.", ".branch_b.3."),
    # CompressAI before 1.2 named the entropy bottleneck's factorised-density parameters _matrix0, ...
    (r"entropy_bottleneck\._matrix(\d+)$", r"entropy_bottleneck.matrices.\1"),
    (r"entropy_bottleneck\._bias(\d+)$", r"entropy_bottleneck.biases.\1"),
    (r"entropy_bottleneck\._factor(\d+)$", r"entropy_bottleneck.factors.\1"),
]


def _apply(rules: List[_Rule], key: str) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _glic_key(key: str) -> str:
    out = _apply(_GLIC_RULES, key)
    if ".layers." not in out and (".blocks." in out or ".h_a." in out or ".h_s." in out or "channel_context" in out
                                  or "entropy_parameters" in out):
        for pattern, repl in _GTC:
            out = re.sub(pattern, repl, out)
    return out


def _strip(obj: Any) -> Dict[str, Tensor]:
    """The state dict inside the layouts the authors' loaders accept."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError("not a state dict: expected a dict of tensors, or one under 'state_dict' / "
                              "'model_state_dict'")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"not a state dict: entry {bad[0]!r} is not a named tensor")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def official_state_dict(path_or_state: Union[str, os.PathLike, Mapping[str, Any]]) -> Dict[str, Tensor]:
    """Read an authors' checkpoint: a bare state dict, ``{"state_dict": ...}`` or
    ``{"model_state_dict": ...}``, keys optionally prefixed with ``module.``.

    Files are read with ``torch.load(weights_only=True)``: nothing is unpickled
    beyond tensors and containers.
    """
    if isinstance(path_or_state, Mapping):
        return _strip(path_or_state)
    p = Path(path_or_state)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist or is not a file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"'{p}' is not a readable PyTorch checkpoint ({first})") from None
    return _strip(obj)


def convert_official(name: str, state: Mapping[str, Tensor], net: Optional[torch.nn.Module] = None
                     ) -> Dict[str, Tensor]:
    """Map an authors' state dict onto ``net`` (default: the compat paper model) -> our state dict.

    Raises :class:`~gnn_lic.errors.CheckpointError` naming the first key that
    cannot be mapped, a shape that does not fit, or a parameter the file lacks.
    """
    if name not in OFFICIAL_MODELS:
        raise CheckpointError(f"no authors' checkpoint layout for model '{name}' (known: {', '.join(OFFICIAL_MODELS)})")
    if net is None:
        net = create_model(name, size="paper", compat="official")
    own = net.state_dict()
    params = {k for k, _ in net.named_parameters()}
    pieces: Dict[str, List[Tuple[int, Tensor]]] = {}
    for key, value in state.items():
        if key.endswith(_REBUILT):
            continue
        if name == "glic":
            target = _glic_targets(key, value)
        else:
            target = [(_apply(_GABIC_RULES, key), 0, value)]  # GABIC layouts differ by names only
        for our_key, order, piece in target:
            if our_key not in own or our_key not in params:
                raise CheckpointError(f"authors' {name} key '{key}' has no counterpart in gnn_lic's model "
                                      f"(mapped to '{our_key}')")
            pieces.setdefault(our_key, []).append((order, piece))
    out: Dict[str, Tensor] = {}
    for our_key, parts in pieces.items():
        orders = [o for o, _ in parts]
        if len(set(orders)) != len(orders):
            raise CheckpointError(f"two authors' {name} keys map to '{our_key}'")
        value = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])]) if len(parts) > 1 else parts[0][1]
        want = own[our_key]
        if value.numel() != want.numel() or (value.dim() == want.dim() and value.shape != want.shape):
            raise CheckpointError(f"authors' {name} weights for '{our_key}' have shape {tuple(value.shape)}, "
                                  f"gnn_lic's model needs {tuple(want.shape)}")
        out[our_key] = value.reshape(want.shape).to(want.dtype)
    missing = sorted(params - set(out))
    if missing:
        raise CheckpointError(f"the authors' {name} checkpoint lacks {len(missing)} parameters "
                              f"(e.g. '{missing[0]}')")
    for key, value in own.items():  # buffers: our own, rebuilt by update()
        out.setdefault(key, value)
    return out


def _glic_targets(key: str, value: Tensor) -> List[Tuple[str, int, Tensor]]:
    """Our key(s), order of concatenation and piece for one GLIC authors' key."""
    m = re.search(r"\.grapher\.(proj_group|proj_sample)\.(weight|bias)$", key)
    if m is None:
        try:
            return [(_glic_key(key), 0, value)]
        except KeyError as exc:
            raise CheckpointError(f"authors' glic key '{key}' cannot be mapped ({exc.args[0]})") from None
    conv = _glic_key(key[: m.start()] + ".grapher.x").rsplit(".grapher.x", 1)[0] + ".conv"
    kind, attr = m.groups()
    if kind == "proj_group":  # queries: first half of qk
        return [(f"{conv}.qk.{attr}", 0, value)]
    keys, values = value.chunk(2, dim=0)  # [keys | values]
    return [(f"{conv}.qk.{attr}", 1, keys), (f"{conv}.phi.{attr}", 0, values)]


def load_official(name: str, path_or_state_dict: Union[str, os.PathLike, Mapping[str, Any]],
                  **model_kwargs: Any) -> torch.nn.Module:
    """A ready gnn_lic model (eval mode, entropy tables built) holding the authors' weights.

    Args:
        name (str): ``"glic"`` (``glic_model.GLICModel`` checkpoints) or ``"gabic"``
            (``WinGraph_WA`` checkpoints with edge attributes).
        path_or_state_dict: a checkpoint file or an already loaded object, in any
            layout :func:`official_state_dict` accepts.
        **model_kwargs: widths of an authors' model built with other sizes than the
            released ones (passed to ``create_model(name, size="paper", compat="official", ...)``).
    """
    if name not in OFFICIAL_MODELS:
        raise CheckpointError(f"no authors' checkpoint layout for model '{name}' (known: {', '.join(OFFICIAL_MODELS)})")
    state = official_state_dict(path_or_state_dict)
    try:
        net = create_model(name, size="paper", compat="official", **model_kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot build '{name}' with {model_kwargs}: {exc}") from None
    net.load_state_dict(convert_official(name, state, net), strict=True)
    net.update(force=True)
    return net.eval()
