"""PatchMatch: approximate patch nearest neighbours by propagation and random search (``vision_kernels::patch_match``).

Minimizes the score of :func:`vision_kernels.ops.patch_nn` (``ssd``, or ``ssd / den(k)`` with
``den(k) = alpha * n + min_q ssd(q, k)`` given as ``key_den``) over a few candidates per query; see
csrc/patch_nn/match.h for the steps and the generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import ArgCheck
from .._declare import Native, Target, declare
from .._interop import accepts_arrays
from ._common import (
    PATCH_MATCH,
    PatchNNResult,
    as_video,
    check_search,
    distance_dtype,
    mask_as_video,
    mask_or_all,
    normalize_patch_size,
    validate_alpha,
)

__all__ = ["patch_match"]


@declare("vision_kernels::patch_match")
def _patch_match_op(
    target: Target,
    queries: Tensor,
    keys: Tensor,
    query_mask: Tensor | None,
    key_mask: Tensor | None,
    key_den: Tensor | None,
    pt: int,
    ph: int,
    pw: int,
    iterations: int,
    seed: int,
    init: Tensor | None,
    check_finite: bool,
) -> Native[tuple[Tensor, Tensor]]:
    """Check the inputs, allocate ``(index, ssd)`` over the query grid (and the CUDA state)."""
    patch = (pt, ph, pw)
    q_grid, k_grid = check_search(PATCH_MATCH, queries, keys, query_mask, key_mask, patch, check_finite, target.real)
    check = ArgCheck(PATCH_MATCH)
    if iterations < 0:
        check.fail("iterations", f"must be >= 0, got {iterations}")
    if not 0 <= seed < 2**63:
        check.fail("seed", f"must be in [0, 2**63), got {seed}")
    if init is not None:
        check.dtype(init, "init", (torch.long,))
        check.shape(init, "init", q_grid, "(the query patch grid)")
    if key_den is not None:
        check.dtype(key_den, "key_den", (torch.float64,))
        check.shape(key_den, "key_den", k_grid, "(the key patch grid)")
    index = queries.new_empty(q_grid, dtype=torch.long)  # [Tq', Hq', Wq']
    ssd = queries.new_empty(q_grid, dtype=torch.float64)  # [Tq', Hq', Wq']
    if not target.real:
        return Native((index, ssd), args=())
    keys_total = math.prod(k_grid)
    if init is not None and init.numel() > 0:
        low, high = int(init.min()), int(init.max())
        if low < -1 or high >= keys_total:
            check.fail(
                "init",
                f"must hold flat indices into the key patch grid of {keys_total} positions (or -1 for none), "
                f"got values in [{low}, {high}]",
                IndexError,
            )
    device = queries.device
    guesses = init if init is not None else torch.full((1, 1, 1), -1, dtype=torch.long, device=device).expand(q_grid)
    den = key_den.contiguous() if key_den is not None else torch.empty(0, dtype=torch.float64, device=device)
    qm, km = mask_or_all(query_mask, q_grid, device), mask_or_all(key_mask, k_grid, device)
    workspace: tuple[Tensor, ...] = ()
    if target.cuda_source:
        workspace = (
            torch.empty((2, index.numel()), dtype=torch.long, device=device),  # ping-pong keys
            torch.empty((4, index.numel()), dtype=torch.float64, device=device),  # scores, ssd
            torch.empty(den.numel(), dtype=torch.float64, device=device),  # w(k) = 1 / den(k)
        )
    args = (queries, keys, qm, km, den, pt, ph, pw, iterations, seed, guesses, index, ssd)
    return Native((index, ssd), args=args, workspace=workspace)


@accepts_arrays("queries", "keys", "query_mask", "key_mask", "init")
def patch_match(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int] = 7,
    *,
    alpha: float | None = None,
    iterations: int = 5,
    seed: int = 0,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    init: Tensor | None = None,
    check_finite: bool = True,
) -> PatchNNResult:
    """Approximate nearest key patches by PatchMatch (propagation and random search), seeded.

    Minimizes the same score as :func:`patch_nn` (``D``, or ``D / (alpha + min_q D)``), but visits only
    a few candidates per query: initial guesses (``init``, random keys), then ``iterations``
    synchronous steps of propagation from neighbours (1 and 16, 8, 4, 2, 1, 16, ... positions away along
    t, y and x) and random search around the current best with halving radii. Candidates are scored in
    the exact arithmetic, so a returned distance is the true ``D`` of the returned key, and the same
    seed gives the same result on CPU and CUDA, whatever the thread count. With ``alpha``, the
    per-key minima ``min_q D(q, k)`` are themselves estimated by a PatchMatch from keys to queries
    (an upper bound of the exact minima). Recall against :func:`patch_nn` is reported by the
    benchmarks (``vision-kernels bench --family patch_nn``).

    Args:
        queries, keys, patch_size, alpha, query_mask, key_mask, check_finite: as in :func:`patch_nn`.
        iterations: propagation + random-search steps (0: initial guesses only).
        seed: random seed in ``[0, 2**63)``.
        init: optional int64 first guess per query position (flat key index, -1 for none), e.g. the
            previous result when the queries changed little.

    Returns:
        :class:`PatchNNResult` ``(index, distance)`` over the query patch grid.
    """
    q, image = as_video(queries, "queries", PATCH_MATCH)
    k, _ = as_video(keys, "keys", PATCH_MATCH)
    patch = normalize_patch_size(patch_size, PATCH_MATCH)
    qm = mask_as_video(query_mask, image, "query_mask", PATCH_MATCH)
    km = mask_as_video(key_mask, keys.dim() == 3, "key_mask", PATCH_MATCH)
    check = ArgCheck(PATCH_MATCH)
    if init is not None:
        check.tensor(init, "init")
    guess = None if init is None else (init[None] if image and init.dim() == 2 else init)
    iterations = check.integer(iterations, "iterations")  # ranges: checked by the op
    seed = check.integer(seed, "seed")
    n = q.shape[-1] * math.prod(patch)
    den = None
    alpha = validate_alpha(alpha, PATCH_MATCH)
    if alpha is not None:
        _, minima = _patch_match_op(k, q, km, qm, None, *patch, iterations, (seed + 1) % 2**63, None, check_finite)
        den = float(alpha) * n + minima
    index, ssd = _patch_match_op(q, k, qm, km, den, *patch, iterations, seed, guess, check_finite)
    distance = (ssd / n).to(distance_dtype(q.dtype))
    if image:
        index, distance = index[0], distance[0]
    return PatchNNResult(index, distance)
