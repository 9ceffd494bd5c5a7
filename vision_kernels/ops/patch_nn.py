"""Space-time patch nearest neighbours: exact search, PatchMatch, voting (GPNN / VGPNN kernels).

Inputs are ``[T, H, W, C]`` arrays (videos; an image is ``T = 1``, and ``[H, W, C]`` images are
accepted and give 2-D results). A patch of size ``(pt, ph, pw)`` at grid position ``(t, y, x)``
holds ``x[t + dt, y + dy, x + dx, c]``; positions form the grid ``[T - pt + 1, H - ph + 1, W - pw + 1]``
numbered row-major (the *flat index*). Patches are read straight from the input (implicit im2col):
no unfolded copy is made.

The distance is the mean squared difference over the ``n = pt * ph * pw * C`` patch values,

    D(q, k) = ssd(q, k) / n,        ssd(q, k) = sum_e (q_e - k_e)^2,

in float64, summed in patch order (pixels are expected in [0, 1]; ``alpha`` is on that scale).
With ``alpha`` the score is GPNN's normalized distance

    S(q, k) = D(q, k) / (alpha + min_q' D(q', k)),

which favours keys that no query is close to yet (completeness), evaluated exactly as
``ssd(q, k) * w(k)`` with ``w(k) = 1 / (alpha * n + min_q' ssd(q', k))`` (each step rounded to float64);
``alpha=None`` is plain nearest neighbour. The exact search returns exactly what the brute-force
reference (:func:`vision_kernels.reference.patch_nn.patch_nn`) returns, ties going to the lowest key
index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _native
from ._checks import ArgCheck, shape_string
from ._interop import accepts_arrays
from ._registry import cpu_native, register_cuda, register_fake

__all__ = [
    "PatchNNResult",
    "patch_nn",
    "patch_match",
    "patch_vote",
    "normalize_patch_size",
    "patch_grid_shape",
    "valid_patch_mask",
    "default_vote_sigma",
]

PATCH_NN = "vision_kernels.patch_nn"


class PatchNNResult(NamedTuple):
    """Result of a patch search over the query patch grid.

    Attributes:
        index: int64 flat index of the chosen key patch in the key grid (-1 for masked queries).
        distance: mean squared difference ``D`` to that key (float32, float64 for float64 inputs;
            +inf for masked queries).
    """

    index: Tensor  # type: ignore[assignment]  # the field shadows tuple.index (public name, kept)
    distance: Tensor


# ---------------------------------------------------------------- shapes and checks


def normalize_patch_size(patch_size: int | Sequence[int], function: str = PATCH_NN) -> tuple[int, int, int]:
    """``(pt, ph, pw)`` from an int ``p`` (``(1, p, p)``), a pair ``(ph, pw)`` or a triple."""
    if isinstance(patch_size, bool):
        raise TypeError(f"{function}: argument 'patch_size' must be an int or a sequence of 2 or 3 ints, got bool")
    if isinstance(patch_size, int):
        size = (1, patch_size, patch_size)
    elif isinstance(patch_size, Sequence) and len(patch_size) in (2, 3) and all(isinstance(p, int) for p in patch_size):
        if len(patch_size) == 2:
            size = (1, patch_size[0], patch_size[1])
        else:
            size = (patch_size[0], patch_size[1], patch_size[2])
    else:
        raise TypeError(
            f"{function}: argument 'patch_size' must be an int or a sequence of 2 or 3 ints, got {patch_size!r}"
        )
    if min(size) < 1:
        raise ValueError(f"{function}: argument 'patch_size' must be positive, got {tuple(size)}")
    return size  # type: ignore[return-value]


def patch_grid_shape(shape: Sequence[int], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """Patch grid ``(T - pt + 1, H - ph + 1, W - pw + 1)`` of a ``[T, H, W, C]`` shape."""
    return (shape[0] - patch_size[0] + 1, shape[1] - patch_size[1] + 1, shape[2] - patch_size[2] + 1)


def valid_patch_mask(pixel_mask: Tensor, patch_size: int | Sequence[int]) -> Tensor:
    """Patch positions whose every pixel is True in ``pixel_mask`` (``[T, H, W]`` or ``[H, W]`` bool).

    Returns a bool mask over the patch grid (2-D for a 2-D input). Typical use: keys that do not
    overlap a hole, ``valid_patch_mask(~hole, 7)``.
    """
    check = ArgCheck("vision_kernels.valid_patch_mask")
    check.tensor(pixel_mask, "pixel_mask")
    if pixel_mask.dim() not in (2, 3):
        check.fail("pixel_mask", f"must have 2 or 3 dimensions [H, W] or [T, H, W], got shape {list(pixel_mask.shape)}")
    pt, ph, pw = normalize_patch_size(patch_size, "vision_kernels.valid_patch_mask")
    video = pixel_mask if pixel_mask.dim() == 3 else pixel_mask[None]
    bad = (~video.bool()).float()[None, None]  # [1, 1, T, H, W]
    any_bad = torch.nn.functional.max_pool3d(bad, (pt, ph, pw), stride=1)[0, 0] > 0
    valid = ~any_bad
    return valid if pixel_mask.dim() == 3 else valid[0]


def _check_inputs(function: str, queries: Tensor, keys: Tensor, patch: tuple[int, int, int]) -> None:
    check = ArgCheck(function)
    check.rank(queries, "queries", 4, "[T, H, W, C]")
    check.rank(keys, "keys", 4, "[T, H, W, C]")
    check.floating(queries, "queries")
    check.same_dtype(queries, "queries", keys, "keys")
    check.same_device(queries, "queries", keys, "keys")
    check.at_least(queries, "queries", 3, 1, "C, the channels")
    check.size(keys, "keys", 3, queries.shape[3], "C, the channels of queries")
    for name, t in (("queries", queries), ("keys", keys)):
        if any(p > s for p, s in zip(patch, t.shape[:3], strict=True)):
            check.fail("patch_size", f"{patch} must fit in '{name}' of shape {shape_string(t.shape)} [T, H, W, C]")


def _check_mask(
    function: str, mask: Tensor | None, name: str, grid: tuple[int, int, int], device: torch.device
) -> None:
    if mask is None:
        return
    check = ArgCheck(function)
    check.dtype(mask, name, (torch.bool,))
    check.shape(mask, name, grid, "(the patch grid)")
    if mask.device != device:
        raise ValueError(
            f"{function}: arguments 'queries' and '{name}' must be on the same device, got {device} and {mask.device}"
        )


def _mask_or_all(mask: Tensor | None, grid: tuple[int, int, int], device: torch.device) -> Tensor:
    if mask is not None:
        return mask
    return torch.ones((1, 1, 1), dtype=torch.bool, device=device).expand(grid)  # stride 0: no memory


def _check_selects(function: str, mask: Tensor | None, name: str, what: str) -> None:
    if mask is not None and mask.numel() > 0 and not bool(mask.any()):
        raise ValueError(f"{function}: argument '{name}' must select at least one {what} position, got all False")


def _check_search(
    function: str,
    queries: Tensor,
    keys: Tensor,
    query_mask: Tensor | None,
    key_mask: Tensor | None,
    patch: tuple[int, int, int],
    check_finite: bool,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Checks shared by the searches (shapes, masks, values); returns the query and key grids."""
    _check_inputs(function, queries, keys, patch)
    q_grid, k_grid = patch_grid_shape(queries.shape, patch), patch_grid_shape(keys.shape, patch)
    _check_mask(function, query_mask, "query_mask", q_grid, queries.device)
    _check_mask(function, key_mask, "key_mask", k_grid, queries.device)
    if check_finite:
        check = ArgCheck(function)
        check.finite(queries, "queries")
        check.finite(keys, "keys")
    _check_selects(function, query_mask, "query_mask", "query")
    _check_selects(function, key_mask, "key_mask", "key")
    return q_grid, k_grid


# ---------------------------------------------------------------- exact search op


def _distance_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare_search(
    queries: Tensor,
    keys: Tensor,
    query_mask: Tensor | None,
    key_mask: Tensor | None,
    pt: int,
    ph: int,
    pw: int,
    alpha: float | None,
    check_finite: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    q_grid, k_grid = _check_search(PATCH_NN, queries, keys, query_mask, key_mask, (pt, ph, pw), check_finite)
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        ArgCheck(PATCH_NN).fail("alpha", f"must be None or a finite number > 0, got {alpha}")
    index = torch.empty(q_grid, dtype=torch.long, device=queries.device)
    distance = torch.empty(q_grid, dtype=_distance_dtype(queries.dtype), device=queries.device)
    return (
        _mask_or_all(query_mask, q_grid, queries.device),
        _mask_or_all(key_mask, k_grid, queries.device),
        index,
        distance,
        math.nan if alpha is None else float(alpha),
    )


@torch.library.custom_op("vision_kernels::patch_nn", mutates_args=(), device_types="cpu")
def _patch_nn_op(
    queries: Tensor,
    keys: Tensor,
    query_mask: Tensor | None,
    key_mask: Tensor | None,
    pt: int,
    ph: int,
    pw: int,
    alpha: float | None,
    check_finite: bool,
) -> tuple[Tensor, Tensor]:
    qm, km, index, distance, a = _prepare_search(queries, keys, query_mask, key_mask, pt, ph, pw, alpha, check_finite)
    ref = _native.tensor_ref
    cpu_native().patch_nn_cpu(ref(queries), ref(keys), ref(qm), ref(km), pt, ph, pw, a, ref(index), ref(distance))
    return index, distance


_FLOAT_SCREEN_LIMIT = 1e15  # larger |values| are screened in float64 (as the CPU kernel decides)


def _largest_magnitude(*tensors: Tensor) -> float:
    return max((float(t.abs().amax()) for t in tensors if t.numel() > 0), default=0.0)


def _launch_patch_nn_cuda(
    native: object,
    stream: int,
    queries: Tensor,
    keys: Tensor,
    query_mask: Tensor | None,
    key_mask: Tensor | None,
    pt: int,
    ph: int,
    pw: int,
    alpha: float | None,
    check_finite: bool,
) -> tuple[Tensor, Tensor]:
    qm, km, index, distance, a = _prepare_search(queries, keys, query_mask, key_mask, pt, ph, pw, alpha, check_finite)
    total = index.numel() + math.prod(patch_grid_shape(keys.shape, (pt, ph, pw)))
    device = queries.device
    # Workspace (allocated here, never inside the core): per-patch bound terms, running bests, normalizers.
    workspace_f64 = torch.empty(7 * total, dtype=torch.float64, device=device)
    workspace_f32 = torch.empty(2 * total, dtype=torch.float32, device=device)
    workspace_i64 = torch.empty(total, dtype=torch.long, device=device)
    wide = queries.dtype == torch.float64 or _largest_magnitude(queries, keys) > _FLOAT_SCREEN_LIMIT
    tensors = (queries, keys, qm, km, index, distance, workspace_f64, workspace_f32, workspace_i64)
    q, k, qmr, kmr, idx, dist, f64, f32, i64 = (_native.tensor_ref(t) for t in tensors)
    native.patch_nn_cuda(q, k, qmr, kmr, pt, ph, pw, a, wide, idx, dist, f64, f32, i64, stream)  # type: ignore[attr-defined]
    return index, distance


register_cuda(_patch_nn_op, _launch_patch_nn_cuda)


@register_fake(_patch_nn_op)
def _(queries, keys, query_mask, key_mask, pt, ph, pw, alpha, check_finite):  # type: ignore[no-untyped-def]
    patch = (pt, ph, pw)
    _check_inputs(PATCH_NN, queries, keys, patch)
    grid = patch_grid_shape(queries.shape, patch)
    _check_mask(PATCH_NN, query_mask, "query_mask", grid, queries.device)
    _check_mask(PATCH_NN, key_mask, "key_mask", patch_grid_shape(keys.shape, patch), queries.device)
    return (
        queries.new_empty(grid, dtype=torch.long),
        queries.new_empty(grid, dtype=_distance_dtype(queries.dtype)),
    )


def _as_video(x: Tensor, name: str, function: str) -> tuple[Tensor, bool]:
    check = ArgCheck(function)
    check.tensor(x, name)
    if x.dim() == 3:
        return x[None], True
    return x, False


def _alpha(alpha: object, function: str) -> float | None:
    """``alpha`` as a float: None, or a finite real number > 0 (a bool or a string is a TypeError)."""
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) and not hasattr(alpha, "__float__"):
        ArgCheck(function).fail("alpha", f"must be None or a number > 0, got {type(alpha).__name__}", TypeError)
    value = float(alpha)  # type: ignore[arg-type]
    if not (value > 0 and math.isfinite(value)):
        ArgCheck(function).fail("alpha", f"must be None or a finite number > 0, got {alpha}")
    return value


def _mask_as_video(mask: Tensor | None, image: bool, name: str, function: str) -> Tensor | None:
    if mask is None:
        return None
    ArgCheck(function).tensor(mask, name)
    return mask[None] if image and mask.dim() == 2 else mask


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
    exactly (see ``csrc/patch_nn/patch_nn.h``).

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
    q, image = _as_video(queries, "queries", PATCH_NN)
    k, _ = _as_video(keys, "keys", PATCH_NN)
    pt, ph, pw = normalize_patch_size(patch_size, PATCH_NN)
    qm = _mask_as_video(query_mask, image, "query_mask", PATCH_NN)
    km = _mask_as_video(key_mask, keys.dim() == 3, "key_mask", PATCH_NN)
    alpha_value = _alpha(alpha, PATCH_NN)
    index, distance = torch.ops.vision_kernels.patch_nn(q, k, qm, km, pt, ph, pw, alpha_value, check_finite)
    if image:
        index, distance = index[0], distance[0]
    return PatchNNResult(index, distance)


# ---------------------------------------------------------------- voting op

PATCH_VOTE = "vision_kernels.patch_vote"
REDUCTIONS = ("mean", "gaussian", "median")


def _vote_weights_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_vote(values: Tensor, index: Tensor, weights: Tensor | None, patch: tuple[int, int, int]) -> tuple[int, ...]:
    check = ArgCheck(PATCH_VOTE)
    check.rank(values, "values", 4, "[T, H, W, C]")
    check.floating(values, "values")
    check.rank(index, "index", 3, "[T', H', W'] (the query patch grid)")
    check.dtype(index, "index", (torch.long,))
    check.same_device(values, "values", index, "index")
    if any(p > s for p, s in zip(patch, values.shape[:3], strict=True)):
        check.fail("patch_size", f"{patch} must fit in 'values' of shape {shape_string(values.shape)} [T, H, W, C]")
    if weights is not None:
        check.floating(weights, "weights")
        check.shape(weights, "weights", index.shape, "(the query patch grid)")
        check.same_device(values, "values", weights, "weights")
    return (
        index.shape[0] + patch[0] - 1,
        index.shape[1] + patch[1] - 1,
        index.shape[2] + patch[2] - 1,
        values.shape[3],
    )


def _prepare_vote(
    values: Tensor,
    index: Tensor,
    weights: Tensor | None,
    pt: int,
    ph: int,
    pw: int,
    reduction: str,
    sigma_t: float,
    sigma_s: float,
) -> tuple[Tensor, Tensor, int]:
    patch = (pt, ph, pw)
    shape = _check_vote(values, index, weights, patch)
    check = ArgCheck(PATCH_VOTE)
    check.choice(reduction, "reduction", REDUCTIONS)
    if not (sigma_t > 0 and sigma_s > 0):
        check.fail("sigma", f"must be > 0, got ({sigma_t}, {sigma_s})")
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
    acc = _vote_weights_dtype(values.dtype)
    if weights is None:
        w = torch.ones((1, 1, 1), dtype=acc, device=values.device).expand(index.shape)
    else:
        check.finite(weights, "weights")
        if weights.numel() > 0 and bool((weights < 0).any()):
            check.fail("weights", "must be >= 0")
        w = weights.to(acc)
    out = torch.empty(shape, dtype=values.dtype, device=values.device)
    return w, out, REDUCTIONS.index(reduction)


@torch.library.custom_op("vision_kernels::patch_vote", mutates_args=(), device_types="cpu")
def _patch_vote_op(
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
) -> Tensor:
    w, out, code = _prepare_vote(values, index, weights, pt, ph, pw, reduction, sigma_t, sigma_s)
    ref = _native.tensor_ref
    cpu_native().patch_vote_cpu(ref(values), ref(index), ref(w), pt, ph, pw, code, sigma_t, sigma_s, fill, ref(out))
    return out


def _launch_patch_vote_cuda(
    native: object, stream: int, values, index, weights, pt, ph, pw, reduction, sigma_t, sigma_s, fill
) -> Tensor:  # type: ignore[no-untyped-def]
    w, out, code = _prepare_vote(values, index, weights, pt, ph, pw, reduction, sigma_t, sigma_s)
    ref = _native.tensor_ref
    native.patch_vote_cuda(  # type: ignore[attr-defined]
        ref(values), ref(index), ref(w), pt, ph, pw, code, sigma_t, sigma_s, fill, ref(out), stream
    )
    return out


register_cuda(_patch_vote_op, _launch_patch_vote_cuda)


@register_fake(_patch_vote_op)
def _(values, index, weights, pt, ph, pw, reduction, sigma_t, sigma_s, fill):  # type: ignore[no-untyped-def]
    return values.new_empty(_check_vote(values, index, weights, (pt, ph, pw)))


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
    out = torch.ops.vision_kernels.patch_vote(v, idx, w, *patch, reduction, sigma_t, sigma_s, float(fill))
    return out[0] if image else out


# ---------------------------------------------------------------- PatchMatch op

PATCH_MATCH = "vision_kernels.patch_match"


def _check_match_arguments(
    q_grid: tuple[int, int, int],
    k_grid: tuple[int, int, int],
    key_den: Tensor | None,
    iterations: int,
    seed: int,
    init: Tensor | None,
) -> None:
    """Checks of patch_match's own arguments that need no tensor values (real and fake kernels)."""
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


def _prepare_match(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    q_grid, k_grid = _check_search(PATCH_MATCH, queries, keys, query_mask, key_mask, (pt, ph, pw), check_finite)
    _check_match_arguments(q_grid, k_grid, key_den, iterations, seed, init)
    check = ArgCheck(PATCH_MATCH)
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
    return (
        _mask_or_all(query_mask, q_grid, device),
        _mask_or_all(key_mask, k_grid, device),
        den,
        guesses,
        torch.empty(q_grid, dtype=torch.long, device=device),
        torch.empty(q_grid, dtype=torch.float64, device=device),
    )


@torch.library.custom_op("vision_kernels::patch_match", mutates_args=(), device_types="cpu")
def _patch_match_op(
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
) -> tuple[Tensor, Tensor]:
    qm, km, den, guesses, index, ssd = _prepare_match(
        queries, keys, query_mask, key_mask, key_den, pt, ph, pw, iterations, seed, init, check_finite
    )
    q, k, qmr, kmr, d, g, idx, out = (_native.tensor_ref(t) for t in (queries, keys, qm, km, den, guesses, index, ssd))
    cpu_native().patch_match_cpu(q, k, qmr, kmr, d, pt, ph, pw, iterations, seed, g, idx, out)
    return index, ssd


def _launch_patch_match_cuda(
    native: object,
    stream: int,
    queries,
    keys,
    query_mask,
    key_mask,
    key_den,
    pt,
    ph,
    pw,
    iterations,
    seed,
    init,
    check_finite,
) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    qm, km, den, guesses, index, ssd = _prepare_match(
        queries, keys, query_mask, key_mask, key_den, pt, ph, pw, iterations, seed, init, check_finite
    )
    state = torch.empty((2, index.numel()), dtype=torch.long, device=queries.device)  # ping-pong keys
    scores = torch.empty((4, index.numel()), dtype=torch.float64, device=queries.device)  # scores, ssd
    weight = torch.empty(den.numel(), dtype=torch.float64, device=queries.device)  # w(k) = 1 / den(k)
    tensors = (queries, keys, qm, km, den, guesses, index, ssd, state, scores, weight)
    q, k, qmr, kmr, d, g, idx, out, st, sc, w = (_native.tensor_ref(t) for t in tensors)
    native.patch_match_cuda(q, k, qmr, kmr, d, pt, ph, pw, iterations, seed, g, idx, out, st, sc, w, stream)  # type: ignore[attr-defined]
    return index, ssd


register_cuda(_patch_match_op, _launch_patch_match_cuda)


@register_fake(_patch_match_op)
def _(queries, keys, query_mask, key_mask, key_den, pt, ph, pw, iterations, seed, init, check_finite):  # type: ignore[no-untyped-def]
    patch = (pt, ph, pw)
    _check_inputs(PATCH_MATCH, queries, keys, patch)
    grid, k_grid = patch_grid_shape(queries.shape, patch), patch_grid_shape(keys.shape, patch)
    _check_mask(PATCH_MATCH, query_mask, "query_mask", grid, queries.device)
    _check_mask(PATCH_MATCH, key_mask, "key_mask", k_grid, queries.device)
    _check_match_arguments(grid, k_grid, key_den, iterations, seed, init)
    return queries.new_empty(grid, dtype=torch.long), queries.new_empty(grid, dtype=torch.float64)


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
    q, image = _as_video(queries, "queries", PATCH_MATCH)
    k, _ = _as_video(keys, "keys", PATCH_MATCH)
    patch = normalize_patch_size(patch_size, PATCH_MATCH)
    qm = _mask_as_video(query_mask, image, "query_mask", PATCH_MATCH)
    km = _mask_as_video(key_mask, keys.dim() == 3, "key_mask", PATCH_MATCH)
    check = ArgCheck(PATCH_MATCH)
    if init is not None:
        check.tensor(init, "init")
    guess = None if init is None else (init[None] if image and init.dim() == 2 else init)
    iterations = check.integer(iterations, "iterations")  # ranges: checked by the op
    seed = check.integer(seed, "seed")
    n = q.shape[-1] * math.prod(patch)
    den = None
    alpha = _alpha(alpha, PATCH_MATCH)
    if alpha is not None:
        _, minima = torch.ops.vision_kernels.patch_match(
            k, q, km, qm, None, *patch, iterations, (seed + 1) % 2**63, None, check_finite
        )
        den = float(alpha) * n + minima
    index, ssd = torch.ops.vision_kernels.patch_match(q, k, qm, km, den, *patch, iterations, seed, guess, check_finite)
    distance = (ssd / n).to(_distance_dtype(q.dtype))
    if image:
        index, distance = index[0], distance[0]
    return PatchNNResult(index, distance)
