"""What the three patch ops share: results, patch geometry, input checks and the policies of patch search.

Policies decided here, once: ``alpha`` is validated by :func:`validate_alpha` (the public functions, the ops'
``prepare`` and :class:`vision_kernels.patchnn.GPNNConfig` call it; the C++ core only asserts), and
whether the exact search screens in float64 by :func:`screens_wide` (both devices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import ArgCheck, shape_string

PATCH_NN = "vision_kernels.patch_nn"
PATCH_VOTE = "vision_kernels.patch_vote"
PATCH_MATCH = "vision_kernels.patch_match"


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


def check_inputs(function: str, queries: Tensor, keys: Tensor, patch: tuple[int, int, int]) -> None:
    check = ArgCheck(function)
    check.rank(queries, "queries", 4, "[T, H, W, C]")
    check.rank(keys, "keys", 4, "[T, H, W, C]")
    check.floating(queries, "queries")
    check.same_dtype(queries, "queries", keys, "keys")
    check.at_least(queries, "queries", 3, 1, "C, the channels")
    check.size(keys, "keys", 3, queries.shape[3], "C, the channels of queries")
    for name, t in (("queries", queries), ("keys", keys)):
        if any(p > s for p, s in zip(patch, t.shape[:3], strict=True)):
            check.fail("patch_size", f"{patch} must fit in '{name}' of shape {shape_string(t.shape)} [T, H, W, C]")


def check_mask(function: str, mask: Tensor | None, name: str, grid: tuple[int, int, int]) -> None:
    if mask is None:
        return
    check = ArgCheck(function)
    check.dtype(mask, name, (torch.bool,))
    check.shape(mask, name, grid, "(the patch grid)")


def mask_or_all(mask: Tensor | None, grid: tuple[int, int, int], device: torch.device) -> Tensor:
    if mask is not None:
        return mask
    return torch.ones((1, 1, 1), dtype=torch.bool, device=device).expand(grid)  # stride 0: no memory


def _check_selects(function: str, mask: Tensor | None, name: str, what: str) -> None:
    if mask is not None and mask.numel() > 0 and not bool(mask.any()):
        raise ValueError(f"{function}: argument '{name}' must select at least one {what} position, got all False")


def check_search(
    function: str,
    queries: Tensor,
    keys: Tensor,
    query_mask: Tensor | None,
    key_mask: Tensor | None,
    patch: tuple[int, int, int],
    check_finite: bool,
    real: bool,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Checks shared by the searches (shapes, masks; values when ``real``); returns the query and key grids."""
    check_inputs(function, queries, keys, patch)
    q_grid, k_grid = patch_grid_shape(queries.shape, patch), patch_grid_shape(keys.shape, patch)
    check_mask(function, query_mask, "query_mask", q_grid)
    check_mask(function, key_mask, "key_mask", k_grid)
    if not real:
        return q_grid, k_grid
    if check_finite:
        check = ArgCheck(function)
        check.finite(queries, "queries")
        check.finite(keys, "keys")
    _check_selects(function, query_mask, "query_mask", "query")
    _check_selects(function, key_mask, "key_mask", "key")
    return q_grid, k_grid


def distance_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, else float32 (distances and accumulations)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_video(x: Tensor, name: str, function: str) -> tuple[Tensor, bool]:
    check = ArgCheck(function)
    check.tensor(x, name)
    if x.dim() == 3:
        return x[None], True
    return x, False


def validate_alpha(alpha: object, function: str) -> float | None:
    """``alpha`` as a float: None, or a finite real number > 0 (a bool or a string is a TypeError).

    The one check of GPNN's completeness weight, wherever it enters (ops, GPNN configuration).
    """
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) and not hasattr(alpha, "__float__"):
        ArgCheck(function).fail("alpha", f"must be None or a number > 0, got {type(alpha).__name__}", TypeError)
    value = float(alpha)  # type: ignore[arg-type]
    if not (value > 0 and math.isfinite(value)):
        ArgCheck(function).fail("alpha", f"must be None or a finite number > 0, got {alpha}")
    return value


FLOAT_SCREEN_LIMIT = 1e15  # larger |values| overflow float32 |x|^2 sums: screened in float64


def screens_wide(queries: Tensor, keys: Tensor) -> bool:
    """Whether the exact search screens in float64: float64 inputs or values beyond :data:`FLOAT_SCREEN_LIMIT`."""
    if queries.dtype == torch.float64:
        return True
    largest = max((float(t.abs().amax()) for t in (queries, keys) if t.numel() > 0), default=0.0)
    return largest > FLOAT_SCREEN_LIMIT


def mask_as_video(mask: Tensor | None, image: bool, name: str, function: str) -> Tensor | None:
    if mask is None:
        return None
    ArgCheck(function).tensor(mask, name)
    return mask[None] if image and mask.dim() == 2 else mask
