"""Pairwise squared Euclidean distance (the first op carried through every layer).

    sq_l2_distance(x, y)[i, j] = sum_d (x[i, d] - y[j, d])^2,   x: [N, D], y: [M, D] -> [N, M]

Computed in the difference form (no |x|^2 + |y|^2 - 2 x.y cancellation), accumulated in float32
(float64 for float64 inputs), returned in the input dtype. Gradients:
dL/dx_i = 2 (x_i sum_j g_ij - sum_j g_ij y_j), dL/dy_j = 2 (y_j sum_i g_ij - sum_i g_ij x_i).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._checks import ArgCheck
from ._declare import Native, Target, declare
from ._interop import accepts_arrays

__all__ = ["sq_l2_distance"]

FUNCTION = "vision_kernels.sq_l2_distance"


@declare("vision_kernels::sq_l2_distance")
def _sq_l2_distance_op(target: Target, x: Tensor, y: Tensor, check_finite: bool) -> Native[Tensor]:
    """Check the inputs and allocate the output [N, M]; native arguments ``(x, y, out)``."""
    check = ArgCheck(FUNCTION)
    check.rank(x, "x", 2, "[N, D]")
    check.rank(y, "y", 2, "[M, D]")
    check.floating(x, "x")
    check.same_dtype(x, "x", y, "y")
    check.size(y, "y", 1, x.shape[1], "D, the feature size of x")
    check.at_least(x, "x", 1, 1, "D, the feature size")
    if check_finite and target.real:
        check.finite(x, "x")
        check.finite(y, "y")
    out = x.new_empty((x.shape[0], y.shape[0]))  # [N, M]
    return Native(out, args=(x, y, out))


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, bool], output: Tensor) -> None:
    x, y, _ = inputs
    ctx.save_for_backward(x, y)


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
    x, y = ctx.saved_tensors  # [N, D], [M, D]; grad: [N, M]
    grad_x = grad_y = None
    if ctx.needs_input_grad[0]:
        grad_x = 2 * (x * grad.sum(1, keepdim=True) - grad @ y)
    if ctx.needs_input_grad[1]:
        grad_y = 2 * (y * grad.sum(0).unsqueeze(1) - grad.mT @ x)
    return grad_x, grad_y, None


_sq_l2_distance_op.register_autograd(_backward, setup_context=_setup_context)


@accepts_arrays("x", "y")
def sq_l2_distance(x: Tensor, y: Tensor, *, check_finite: bool = True) -> Tensor:
    """Squared Euclidean distance between every row of ``x`` and every row of ``y``.

    ``out[i, j] = sum_d (x[i, d] - y[j, d])**2``

    Args:
        x: ``[N, D]`` floating tensor (float32, float64, float16 or bfloat16), any strides.
        y: ``[M, D]`` tensor of the same dtype and device.
        check_finite: raise ValueError if an input holds NaN or Inf (one extra pass over the
            inputs); pass False to skip it, and NaN then propagates to the affected distances.

    Returns:
        ``[N, M]`` tensor of x's dtype (accumulated in float32, float64 for float64 inputs).
        N = 0 or M = 0 gives an empty result; D must be at least 1. Differentiable in x and y.
        numpy (cupy) inputs give a numpy (cupy) result.
    """
    check = ArgCheck(FUNCTION)
    check.tensor(x, "x")
    check.tensor(y, "y")
    return _sq_l2_distance_op(x, y, check_finite)
