"""Plain-PyTorch ground truth of the pca_project family's ops, ``pca_project`` and ``pca_reconstruct``
(weight-space PCA, weights2weights).

    project:      c = ((w - mu) / sigma) @ V          w: [B, D], V: [D, K] -> c: [B, K]
    reconstruct:  w = (c @ V^T) * sigma + mu          c: [B, K]            -> w: [B, D]

Everything is computed in float32 (float64 when the stored weights/basis are float64), exactly
as the kernels accumulate: low-precision inputs are upcast first. The standardized matrix
(w - mu) / sigma is materialized here, which is what the kernels avoid.
"""

from __future__ import annotations

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 storage, float32 for everything else (fp32, fp16, bf16)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pca_project(w: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor) -> Tensor:
    """``c = ((w - mean) / std) @ basis`` in the accumulation dtype (mean None means zero).

    ``w``: ``[B, D]``, ``mean``/``std``: ``[D]``, ``basis``: ``[D, K]`` -> ``[B, K]``.
    """
    accumulate = accumulation_dtype(basis.dtype)
    standardized = w.to(accumulate)  # [B, D]
    if mean is not None:
        standardized = standardized - mean.to(accumulate)
    standardized = standardized / std.to(accumulate)
    return standardized @ basis.to(accumulate)  # [B, K]


def pca_reconstruct(
    coeffs: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor, out_dtype: torch.dtype | None = None
) -> Tensor:
    """``w = (coeffs @ basis^T) * std + mean`` in the accumulation dtype, returned as ``out_dtype``.

    ``coeffs``: ``[B, K]``, ``basis``: ``[D, K]`` -> ``[B, D]`` (``out_dtype`` defaults to the basis dtype).
    """
    accumulate = accumulation_dtype(basis.dtype)
    weights = (coeffs.to(accumulate) @ basis.to(accumulate).T) * std.to(accumulate)  # [B, D]
    if mean is not None:
        weights = weights + mean.to(accumulate)
    return weights.to(out_dtype or basis.dtype)
