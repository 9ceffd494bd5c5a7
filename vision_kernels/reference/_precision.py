"""The accumulation precision the references share with the kernels."""

from __future__ import annotations

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs accumulate in float64, every other floating dtype in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
