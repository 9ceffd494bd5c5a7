"""Sampling new models from the weight space (weights2weights, section "Sampling")."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops._checks import ArgCheck
from .space import WeightSpace

__all__ = ["sample_coefficients"]


def sample_coefficients(
    space: WeightSpace,
    n: int = 1,
    *,
    scale: float = 1.0,
    n_components: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Coordinates of ``n`` new models, each component drawn independently from a Gaussian.

    ``c[i, k] ~ N(m_k, (scale * s_k)^2)`` with ``m_k`` and ``s_k`` the mean and standard deviation
    of component k over the training models (``s_k = singular_value_k / sqrt(N - 1)``). ``scale``
    < 1 stays closer to the typical model, > 1 gives more unusual ones. Turn the result into a
    model with ``space.reconstruct(c)`` or ``space.export_adapter(path, c)``.

    Returns:
        ``[n, k]`` float32 coordinates (``k = n_components`` or every component of the space).
    """
    check = ArgCheck("vision_kernels.weightspace.sample_coefficients")
    if n < 0:
        check.fail("n", f"must be >= 0, got {n}")
    check.positive(scale, "scale")
    count = space.n_components if n_components is None else n_components
    check.in_range(count, "n_components", 1, space.n_components + 1)
    mean = space.coefficient_mean[:count]  # [k]
    std = space.coefficient_std[:count] * scale  # [k]
    noise = torch.randn((n, count), generator=generator, dtype=torch.float64)
    return (mean + noise * std).float()
