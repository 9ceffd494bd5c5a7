"""Sample calls of the patch_nn family's ops for the shared contract tests (test_op_contracts.py)."""

from __future__ import annotations

import torch

from vision_kernels.testing import OpSample

SMALL = ("opcheck", "emulated", "bad_device", "bad_dtype", "bad_shape")
LARGE = ("threads", "python_threads")


def _quantized(*shape: int) -> torch.Tensor:
    """Values on a grid of 8 levels: many exact ties, which every thread count must break the same way."""
    return torch.randint(0, 8, shape).float() / 8


def _search(alpha: float | None, masked: bool = False, large: bool = False) -> dict[str, object]:
    q, k = (
        (_quantized(1, 30, 31, 3), _quantized(1, 29, 33, 3))
        if large
        else (torch.rand(1, 6, 7, 2), torch.rand(1, 7, 6, 2))
    )
    query_mask = None
    if masked:
        query_mask = torch.rand(1, 4, 5) > 0.3  # [T, H', W'] of the query patches
        query_mask[0, 0, 0] = True
    return {"queries": q, "keys": k, "query_mask": query_mask, "key_mask": None, "pt": 1, "ph": 5 if large else 3,
            "pw": 5 if large else 3, "alpha": alpha, "check_finite": not masked}  # fmt: skip


def _vote(gaussian: bool, height: int = 6, width: int = 7) -> dict[str, object]:
    grid = (1, height - 2, width - 2)  # [T, H', W'] of the 3x3 patches
    return {"values": torch.rand(1, height, width, 2), "index": torch.randint(-1, grid[1] * grid[2], grid),
            "weights": torch.rand(grid) if gaussian else None, "pt": 1, "ph": 3, "pw": 3,
            "reduction": "gaussian" if gaussian else "mean", "sigma_t": 0.5 if gaussian else 1.0,
            "sigma_s": 0.8 if gaussian else 1.0, "fill": 0.0}  # fmt: skip


def _match(large: bool = False) -> dict[str, object]:
    q, k = (
        (torch.rand(1, 20, 20, 3), torch.rand(1, 18, 22, 3))
        if large
        else (torch.rand(1, 9, 10, 3), torch.rand(1, 8, 8, 3))
    )
    return {"queries": q, "keys": k, "query_mask": None, "key_mask": None, "key_den": None, "pt": 1,
            "ph": 5 if large else 3, "pw": 5 if large else 3, "iterations": 2, "seed": 5, "init": None,
            "check_finite": True}  # fmt: skip


SAMPLES = [
    OpSample("vision_kernels::patch_nn", lambda: _search(None), "plain", SMALL),
    OpSample("vision_kernels::patch_nn", lambda: _search(None, masked=True), "masked", SMALL),
    OpSample("vision_kernels::patch_nn", lambda: _search(0.1), "alpha", SMALL),
    OpSample("vision_kernels::patch_nn", lambda: _search(0.1, masked=True), "alpha-masked", SMALL),
    OpSample("vision_kernels::patch_nn", lambda: _search(0.01, large=True), "ties", LARGE),
    OpSample("vision_kernels::patch_vote", lambda: _vote(False), "mean", SMALL),
    OpSample("vision_kernels::patch_vote", lambda: _vote(True), "gaussian", SMALL),
    OpSample("vision_kernels::patch_vote", lambda: _vote(True, 60, 70), "gaussian-60x70", LARGE),
    OpSample("vision_kernels::patch_match", _match, "3x3", SMALL),
    OpSample("vision_kernels::patch_match", lambda: _match(large=True), "5x5", LARGE),
]
