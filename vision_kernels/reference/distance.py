"""Plain-PyTorch ground truth for vision_kernels.ops.distance."""

from __future__ import annotations

import torch
from torch import Tensor


def sq_l2_distance(x: Tensor, y: Tensor, *, chunk_rows: int = 256) -> Tensor:
    """``out[i, j] = sum_d (x[i, d] - y[j, d])**2`` by broadcasting, ``chunk_rows`` rows of x at a time.

    Computed in float32 (float64 for float64 inputs) and returned in x's dtype, as the kernel does.
    """
    accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa, ya = x.to(accumulate), y.to(accumulate)  # [N, D], [M, D]
    out = torch.empty((x.shape[0], y.shape[0]), dtype=accumulate, device=x.device)
    for start in range(0, x.shape[0], chunk_rows):
        rows = xa[start : start + chunk_rows]  # [n, D]
        out[start : start + chunk_rows] = ((rows[:, None, :] - ya[None, :, :]) ** 2).sum(-1)
    return out.to(x.dtype)
