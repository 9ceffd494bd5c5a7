"""Exact patch nearest neighbours, plain or GPNN-normalized (the op ``vision_kernels::patch_nn``).

    best(q) = argmin_k ssd(q, k)                      alpha = None
    best(q) = argmin_k ssd(q, k) * w(k),  w(k) = 1 / (alpha * n + min_q' ssd(q', k))

over the key patches, ties to the lowest flat key index (see the package docstring and csrc/patch_nn/search.h).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._declare import Native, Target, declare
from .._interop import accepts_arrays
from ._common import (
    PATCH_NN,
    PatchNNResult,
    as_video,
    check_search,
    distance_dtype,
    mask_as_video,
    mask_or_all,
    normalize_patch_size,
    screens_wide,
    validate_alpha,
)

__all__ = ["patch_nn"]


@declare("vision_kernels::patch_nn")
def _patch_nn_op(
    target: Target,
    queries: Tensor,
    keys: Tensor,
    query_mask: Tensor | None,
    key_mask: Tensor | None,
    pt: int,
    ph: int,
    pw: int,
    alpha: float | None,
    check_finite: bool,
) -> Native[tuple[Tensor, Tensor]]:
    """Check the inputs, decide the screening precision, allocate ``(index, distance)`` over the query grid."""
    patch = (pt, ph, pw)
    q_grid, k_grid = check_search(PATCH_NN, queries, keys, query_mask, key_mask, patch, check_finite, target.real)
    alpha = validate_alpha(alpha, PATCH_NN)
    index = queries.new_empty(q_grid, dtype=torch.long)  # [Tq', Hq', Wq']
    distance = queries.new_empty(q_grid, dtype=distance_dtype(queries.dtype))  # [Tq', Hq', Wq']
    if not target.real:
        return Native((index, distance), args=())
    device = queries.device
    qm, km = mask_or_all(query_mask, q_grid, device), mask_or_all(key_mask, k_grid, device)
    wide = screens_wide(queries, keys)
    a = math.nan if alpha is None else alpha
    workspace: tuple[Tensor, ...] = ()
    if target.cuda_source:  # per-patch bound terms, running bests, normalizers
        total = index.numel() + math.prod(k_grid)
        workspace = (
            torch.empty(7 * total, dtype=torch.float64, device=device),
            torch.empty(2 * total, dtype=torch.float32, device=device),
            torch.empty(total, dtype=torch.long, device=device),
        )
    args = (queries, keys, qm, km, pt, ph, pw, a, wide, index, distance)
    return Native((index, distance), args=args, workspace=workspace)


@accepts_arrays("queries", "keys", "query_mask", "key_mask")
def patch_nn(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int] = 7,
    *,
    alpha: float | None = None,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    check_finite: bool = True,
) -> PatchNNResult:
    """Exact nearest key patch of every query patch, plain or GPNN-normalized.

    ``best(q) = argmin_k D(q, k)`` (``alpha=None``) or ``argmin_k D(q, k) / (alpha + min_q' D(q', k))``,
    with ``D`` the mean squared difference over the ``n = pt * ph * pw * C`` patch values, computed
    exactly as the reference does (float64, summed in patch order); ties go to the lowest flat key
    index. The normalized score is computed in two exact passes (per-key minima, then the argmin)
    with memory linear in the number of patches: the Nq x Nk matrix is never stored.

    Speed: candidates are screened by a float32 GEMM-form micro-kernel fused with the running best,
    with a rigorous bound on its rounding error, and only keys that could still win are re-scored
    exactly (see ``csrc/patch_nn/search.h``).

    Args:
        queries: ``[T, H, W, C]`` (or ``[H, W, C]``) float16/bfloat16/float32/float64, any strides.
        keys: ``[T', H', W', C]`` (or ``[H', W', C]``), same dtype, device and channels.
        patch_size: ``p`` (= ``(1, p, p)``), ``(ph, pw)`` or ``(pt, ph, pw)``; must fit in both inputs.
        alpha: ``None`` for plain nearest neighbour, or GPNN's ``alpha > 0`` (on the scale of ``D``).
        query_mask: bool over the query patch grid: queries to search for (others get index -1).
        key_mask: bool over the key patch grid: keys that may be chosen.
        check_finite: raise ValueError on NaN/Inf inputs (one extra pass).

    Returns:
        :class:`PatchNNResult` ``(index, distance)`` over the query patch grid ``[Tq', Hq', Wq']``
        (``[Hq', Wq']`` for image inputs): flat key indices (int64) and ``D`` of the chosen key.

    Raises:
        ValueError / TypeError naming the argument: wrong ranks, dtypes, channel counts, devices,
        patches larger than an input, masks of the wrong shape or all False, NaN/Inf values.
    """
    q, image = as_video(queries, "queries", PATCH_NN)
    k, _ = as_video(keys, "keys", PATCH_NN)
    pt, ph, pw = normalize_patch_size(patch_size, PATCH_NN)
    qm = mask_as_video(query_mask, image, "query_mask", PATCH_NN)
    km = mask_as_video(key_mask, keys.dim() == 3, "key_mask", PATCH_NN)
    alpha_value = validate_alpha(alpha, PATCH_NN)
    index, distance = _patch_nn_op(q, k, qm, km, pt, ph, pw, alpha_value, check_finite)
    if image:
        index, distance = index[0], distance[0]
    return PatchNNResult(index, distance)
