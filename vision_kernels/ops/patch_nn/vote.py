"""Voting, GPNN's fold step (the op ``vision_kernels::patch_vote``).

    out[t, y, x] = reduce over the query patches p covering (t, y, x) of values[key(index[p]) + (t, y, x) - p]

with the mean, the Gaussian-weighted mean or the lower median as reduction (see :func:`patch_vote`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import ArgCheck, shape_string
from .._declare import Native, Target, declare
from .._interop import accepts_arrays
from ._common import PATCH_VOTE, distance_dtype, normalize_patch_size, patch_grid_shape

__all__ = ["patch_vote", "default_vote_sigma"]

REDUCTIONS = ("mean", "gaussian", "median")


@declare("vision_kernels::patch_vote")
def _patch_vote_op(
    target: Target,
    values: Tensor,
    index: Tensor,
    weights: Tensor | None,
    pt: int,
    ph: int,
    pw: int,
    reduction: str,
    sigma_t: float,
    sigma_s: float,
    fill: float,
) -> Native[Tensor]:
    """Check the inputs, allocate the output ``[T' + pt - 1, H' + ph - 1, W' + pw - 1, C]``."""
    patch = (pt, ph, pw)
    check = ArgCheck(PATCH_VOTE)
    check.rank(values, "values", 4, "[T, H, W, C]")
    check.floating(values, "values")
    check.rank(index, "index", 3, "[T', H', W'] (the query patch grid)")
    check.dtype(index, "index", (torch.long,))
    if any(p > s for p, s in zip(patch, values.shape[:3], strict=True)):
        check.fail("patch_size", f"{patch} must fit in 'values' of shape {shape_string(values.shape)} [T, H, W, C]")
    if weights is not None:
        check.floating(weights, "weights")
        check.shape(weights, "weights", index.shape, "(the query patch grid)")
    shape = tuple(index.shape[d] + patch[d] - 1 for d in range(3)) + (values.shape[3],)
    check.choice(reduction, "reduction", REDUCTIONS)
    if not (sigma_t > 0 and sigma_s > 0):
        check.fail("sigma", f"must be > 0, got ({sigma_t}, {sigma_s})")
    out = values.new_empty(shape)  # [T, H, W, C]
    if not target.real:
        return Native(out, args=())
    grid = math.prod(patch_grid_shape(values.shape, patch))
    if index.numel() > 0:
        low, high = int(index.min()), int(index.max())
        if low < -1 or high >= grid:
            check.fail(
                "index",
                f"must hold flat indices into the value patch grid of {grid} positions (or -1), got values in "
                f"[{low}, {high}]",
                IndexError,
            )
    acc = distance_dtype(values.dtype)
    if weights is None:
        w = torch.ones((1, 1, 1), dtype=acc, device=values.device).expand(index.shape)
    else:
        check.finite(weights, "weights")
        if weights.numel() > 0 and bool((weights < 0).any()):
            check.fail("weights", "must be >= 0")
        w = weights.to(acc)
    code = REDUCTIONS.index(reduction)
    return Native(out, args=(values, index, w, pt, ph, pw, code, sigma_t, sigma_s, fill, out))


def default_vote_sigma(patch_size: tuple[int, int, int]) -> tuple[float, float]:
    """Default ``(sigma_t, sigma_s)`` of Gaussian voting: a quarter of the patch extent (at least 0.5)."""
    pt, ph, pw = patch_size
    return (max(0.5, pt / 4), max(0.5, max(ph, pw) / 4))


@accepts_arrays("values", "index", "weights")
def patch_vote(
    values: Tensor,
    index: Tensor,
    patch_size: int | Sequence[int] = 7,
    *,
    reduction: str = "mean",
    sigma: tuple[float, float] | None = None,
    weights: Tensor | None = None,
    fill: float = 0.0,
) -> Tensor:
    """Fold the value patches chosen by ``index`` back into an array (GPNN's voting step).

    For every output position, the query patches covering it each propose the value at the same
    place in the value patch they chose, and the proposals are reduced::

        mean:     out = sum_p w_p v_p / sum_p w_p             (w_p = weights[p], 1 by default)
        gaussian: the same with w_p * exp(-d_t^2 / (2 sigma_t^2) - (d_y^2 + d_x^2) / (2 sigma_s^2)),
                  d the offset of the position from the patch centre
        median:   the lower median of the v_p, per channel

    Args:
        values: ``[T, H, W, C]`` (or ``[H, W, C]``) value array; value patch ``k`` is the patch at flat
            index ``k`` of its patch grid.
        index: int64 ``[T', H', W']`` (``[H', W']``) flat value-patch index chosen by each query
            position (``-1``: no vote), e.g. ``patch_nn(...).index``.
        patch_size: as in :func:`patch_nn`.
        reduction: ``"mean"``, ``"gaussian"`` or ``"median"``.
        sigma: ``(sigma_t, sigma_s)`` of Gaussian voting (default: :func:`default_vote_sigma`).
        weights: optional non-negative per-query weights ``[T', H', W']`` (mean and gaussian).
        fill: value of positions no patch votes for.

    Returns:
        ``[T' + pt - 1, H' + ph - 1, W' + pw - 1, C]`` (``[H, W, C]`` for 2-D ``index``) in values' dtype,
        accumulated in float32 (float64 for float64 values).
    """
    check = ArgCheck(PATCH_VOTE)
    check.tensor(values, "values")
    check.tensor(index, "index")
    if weights is not None:
        check.tensor(weights, "weights")
    patch = normalize_patch_size(patch_size, PATCH_VOTE)
    image = index.dim() == 2
    v = values[None] if values.dim() == 3 else values
    idx = index[None] if image else index
    w = None if weights is None else (weights[None] if image and weights.dim() == 2 else weights)
    sigma_t, sigma_s = default_vote_sigma(patch) if sigma is None else (float(sigma[0]), float(sigma[1]))
    out = _patch_vote_op(v, idx, w, *patch, reduction, sigma_t, sigma_s, float(fill))
    return out[0] if image else out
