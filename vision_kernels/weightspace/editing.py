"""Semantic edit directions in the weight space (weights2weights, section "Editing").

Given the coordinates ``C`` (``[N, k]``) of the training models and a per-model attribute label
``y`` (``[N]``, e.g. 1 for "beard", 0 otherwise, or a continuous score), the edit direction is the
least-squares fit ``d = argmin ||(C - mean C) d - (y - mean y)||^2``, normalized to unit length.
Attributes that correlate with it (e.g. "beard" with "male") are projected out: ``d`` is replaced
by its component orthogonal to the span of the other attributes' directions, then renormalized.
An edit moves a model by ``strength`` along ``d`` (coefficient units; the training coefficients
have standard deviation ``space.coefficient_std``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..ops._checks import ArgCheck
from .space import WeightSpace

__all__ = ["edit_direction", "edit_directions", "apply_edit", "edit_weights"]

FUNCTION = "vision_kernels.weightspace.edit_direction"


def _labels(labels: Tensor | Sequence[float], count: int, name: str) -> Tensor:
    check = ArgCheck(FUNCTION)
    y = torch.as_tensor(labels, dtype=torch.float64).reshape(-1)
    if y.shape[0] != count:
        check.fail(name, f"must have one label per model ({count}), got {y.shape[0]}")
    check.finite(y, name)
    if float(y.std()) == 0.0:
        check.fail(name, "must vary across models (every label is the same)")
    return y


def _least_squares(centered: Tensor, y: Tensor) -> Tensor:
    return torch.linalg.lstsq(centered, (y - y.mean())[:, None]).solution[:, 0]  # [k]


def edit_direction(
    coefficients: Tensor,
    labels: Tensor | Sequence[float],
    *,
    project_out: Mapping[str, Tensor | Sequence[float]] | Sequence[Tensor] | None = None,
) -> Tensor:
    """Unit edit direction ``[k]`` for one attribute, other attributes projected out.

    Args:
        coefficients: ``[N, k]`` coordinates of the labeled models (e.g. ``space.coefficients``).
        labels: ``[N]`` attribute value of each model.
        project_out: other attributes to remove, as labels (``{name: [N] labels}``) or as ready
            directions (a sequence of ``[k]`` tensors).
    """
    check = ArgCheck(FUNCTION)
    check.rank(coefficients, "coefficients", 2, "[N, k]")
    check.finite(coefficients, "coefficients")
    c = coefficients.double()
    count = c.shape[0]
    centered = c - c.mean(0)
    direction = _least_squares(centered, _labels(labels, count, "labels"))
    others: list[Tensor] = []
    if isinstance(project_out, Mapping):
        others = [_least_squares(centered, _labels(v, count, f"project_out[{k!r}]")) for k, v in project_out.items()]
    elif project_out is not None:
        for i, other in enumerate(project_out):
            other = torch.as_tensor(other, dtype=torch.float64).reshape(-1)
            if other.shape[0] != c.shape[1]:
                check.fail(f"project_out[{i}]", f"must be a [{c.shape[1]}] direction, got {list(other.shape)}")
            others.append(other)
    if others:
        span = torch.linalg.qr(torch.stack(others, 1)).Q  # [k, m] orthonormal
        direction = direction - span @ (span.T @ direction)
    norm = direction.norm()
    if not float(norm) > 1e-12 * max(1.0, float(c.abs().max())):
        check.fail("labels", "give no direction left after projecting out the other attributes")
    return (direction / norm).float()


def edit_directions(coefficients: Tensor, labels: Mapping[str, Tensor | Sequence[float]]) -> dict[str, Tensor]:
    """One unit direction per attribute, each with every other attribute projected out."""
    return {
        name: edit_direction(coefficients, values, project_out={k: v for k, v in labels.items() if k != name})
        for name, values in labels.items()
    }


def apply_edit(coefficients: Tensor, direction: Tensor, strength: float) -> Tensor:
    """``c + strength * d`` (``d`` zero-padded or ``c`` truncated to match when their k differ)."""
    k = coefficients.shape[-1]
    d = direction.to(coefficients.dtype)
    d = d[:k] if d.shape[0] >= k else torch.cat([d, d.new_zeros(k - d.shape[0])])
    return coefficients + strength * d


def edit_weights(space: WeightSpace, weights: Tensor, direction: Tensor, strength: float) -> Tensor:
    """Edit a model given by its full ``[D]`` (or ``[B, D]``) weights, keeping the part of it that lies
    outside the space: ``w + strength * std * (basis[:, :k] @ d)``."""
    step = space.reconstruct(strength * direction.float(), out_dtype=torch.float32) - space.mean.float()  # [D]
    return weights + step.to(weights.dtype)
