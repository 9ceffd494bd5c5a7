"""Patch views of images and videos for the patch methods (the kernels read patches implicitly)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..ops.patch_nn import normalize_patch_size

__all__ = ["unfold_patches"]


def unfold_patches(x: Tensor, patch_size: int | Sequence[int]) -> Tensor:
    """All ``pt x ph x pw`` patches of ``x [T, H, W, C]`` as rows ``[T', H', W', n]``, ``n = pt ph pw C``,
    in element order ``(dt, dy, dx, c)`` (the order of the patch kernels), ``T' = T - pt + 1`` etc.

    A view-backed copy: use it for small inputs or blocks (it holds ``T' H' W' n`` values).
    """
    pt, ph, pw = normalize_patch_size(patch_size)
    windows = x.unfold(0, pt, 1).unfold(1, ph, 1).unfold(2, pw, 1)  # [T', H', W', C, pt, ph, pw]
    return windows.permute(0, 1, 2, 4, 5, 6, 3).reshape(*windows.shape[:3], -1)
