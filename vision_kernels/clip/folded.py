"""Per-head matrices with the output projection, LayerScale, centering, LayerNorm gain and projection folded in.

For layer l and head h::

    M[l, h] = (W_O^h)^T  diag(head_scale_h * ls_1)  C  diag(gamma)  proj          [Dh, E]

with ``W_O^h`` the head's ``[W, Dh]`` block of the output projection, ``ls_1`` the block's
LayerScale (ones if none), ``gamma`` the final LayerNorm's weight, ``proj`` the tower's
projection ``[W, E]`` and ``C = I - 11^T / W`` the centering of a term over the width
(``centered=True``; the per-term convention) or ``C = I`` (``centered=False``; the even-split
convention, which subtracts a share of the LayerNorm mean instead). A head's contribution of
value ``v`` weighted by attention ``a`` is then ``a / std(r) * (v @ M[l, h])``.

Folding is done once per model in float64 and cached; the cache entry is rebuilt when any
weight it depends on changes (in-place updates bump a tensor's version, replacing a parameter
changes its identity).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor

from .towers import VisionTower, as_vision_tower

__all__ = ["folded_head_matrices", "clear_fold_cache"]

_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _stamp(tower: VisionTower) -> tuple:
    return tuple((id(t), t._version, t.device, t.dtype) for t in tower.parameters())


def _fold(tower: VisionTower, centered: bool) -> Tensor:
    final = tower.final_norm()
    gamma = final.weight.detach().double()  # [W]
    proj = final.proj.detach().double()  # [W, E]
    folded = []
    for block in tower.blocks:
        heads, head_dim = block.heads, block.head_dim
        per_head = block.out_weight().detach().double().t().reshape(heads, head_dim, -1)  # [H, Dh, W]
        layer_scale = block.ls_1()
        if layer_scale is not None:
            per_head = per_head * layer_scale.detach().double()
        head_scale = block.head_scale()
        if head_scale is not None:
            per_head = per_head * head_scale.detach().double().view(heads, 1, 1)
        if centered:
            per_head = per_head - per_head.mean(-1, keepdim=True)
        folded.append((per_head * gamma) @ proj)  # [H, Dh, E]
    return torch.stack(folded).to(tower.dtype)  # [L, H, Dh, E]


def folded_head_matrices(model: object, *, centered: bool = True) -> Tensor:
    """``M`` of every layer and head, ``[L, H, Dh, E]`` in the tower's dtype and device (cached per model).

    Args:
        model: open_clip or transformers CLIP model or tower (see :func:`as_vision_tower`).
        centered: fold the per-term centering ``C`` in (per-term convention), or not (even split).
    """
    tower = as_vision_tower(model)
    key = tower.module
    stamp = _stamp(tower)
    with _lock:
        entry = _cache.get(key)
        if entry is not None and entry.get("stamp") == stamp and centered in entry:
            return entry[centered]
    with torch.no_grad():
        folded = _fold(tower, centered)
    with _lock:
        entry = _cache.get(key)
        if entry is None or entry.get("stamp") != stamp:
            entry = {"stamp": stamp}
            _cache[key] = entry
        entry[centered] = folded
    return folded


def clear_fold_cache() -> None:
    """Drop every cached fold (they are rebuilt on demand)."""
    with _lock:
        _cache.clear()
