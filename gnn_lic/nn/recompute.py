"""Maps kept for the backward pass as the cheap step that made them, not as memory.

Under autograd every layer keeps its input for its weight gradient. Where that input is the output of
an elementwise step whose own inputs are kept anyway (a GELU keeps its input; GDN keeps its input and
its normaliser), the map need not live between forward and backward: it can be made again, with the
same kernels and so the same bits, when the backward asks for it. :func:`mark` records such a
recipe for a tensor; inside :class:`recomputed_saves` (a ``torch.autograd.graph.saved_tensors_hooks``
context around a training forward) a layer that keeps a marked tensor, or a view of it, keeps the
recipe instead, and the map is freed once the forward no longer uses it. Outside the context
:func:`mark` does nothing. The models' training forward enters the context unless
``GNN_LIC_RECOMPUTE=0`` in the environment or :func:`set_enabled` turned it off (every map kept: a
little faster, more memory).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["mark", "recomputed_saves", "active", "enabled", "set_enabled"]

_state = threading.local()
_enabled = os.environ.get("GNN_LIC_RECOMPUTE", "1") != "0"


def enabled() -> bool:
    """Whether the models' training forward keeps marked maps as their recipes."""
    return _enabled


def set_enabled(flag: bool) -> bool:
    """Switch the models' use of :class:`recomputed_saves` on or off; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


class _Recipe:
    """``fn(*args)`` and the view of its storage that was kept."""

    __slots__ = ("fn", "args", "size", "stride", "offset")

    def __init__(self, fn: Callable[..., Tensor], args: Tuple, t: Tensor):
        self.fn, self.args = fn, args
        self.size, self.stride, self.offset = t.size(), t.stride(), t.storage_offset()

    def make(self) -> Tensor:
        with torch.no_grad():
            out = self.fn(*self.args)
        return out.as_strided(self.size, self.stride, self.offset)


class recomputed_saves:
    """Context in which tensors marked by :func:`mark` are kept for the backward as their recipes
    (re-entrant: an inner context leaves the outer one in force)."""

    def __init__(self):
        self._recipes: Dict[Tuple[int, int], Tuple[weakref.ref, Callable[..., Tensor], Tuple]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._outer: Optional["recomputed_saves"] = None

    def __enter__(self) -> "recomputed_saves":
        self._outer = active()
        if self._outer is None:
            _state.context = self
            self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._outer is None:
            self._hooks.__exit__(*exc)
            _state.context = None
            self._recipes.clear()

    def _mark(self, out: Tensor, fn: Callable[..., Tensor], args: Tuple) -> None:
        storage = out.untyped_storage()
        self._recipes[(storage.data_ptr(), storage.nbytes())] = (weakref.ref(out), fn, args)

    def _pack(self, t: Tensor):
        storage = t.untyped_storage()
        entry = self._recipes.get((storage.data_ptr(), storage.nbytes()))
        # a recipe holds while the marked tensor lives: after it dies its memory may hold another tensor
        marked = None if entry is None else entry[0]()
        if marked is None or t.dtype != marked.dtype:
            return t
        return _Recipe(entry[1], entry[2], t)

    @staticmethod
    def _unpack(p):
        return p.make() if isinstance(p, _Recipe) else p


def active() -> Optional[recomputed_saves]:
    """The :class:`recomputed_saves` context in force on this thread, if any."""
    return getattr(_state, "context", None)


def mark(out: Tensor, fn: Callable[..., Tensor], *args) -> Tensor:
    """Record that ``out`` is ``fn(*args)`` bit for bit (``args`` are kept by the recipe: they should be
    tensors the backward keeps anyway); returns ``out``. Does nothing outside :class:`recomputed_saves`
    or without autograd."""
    context = active()
    if context is not None and torch.is_grad_enabled():
        context._mark(out, fn, args)
    return out
