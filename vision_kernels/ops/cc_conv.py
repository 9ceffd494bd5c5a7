"""Continuous convolution at any output scale: ``cc_conv2d`` (docs/DESIGN.md 2.4, Shocher et al. 2020).

Output pixel ``(i, j)`` sits at ``(y(i), x(j))`` on the input grid, with per axis (input size ``n_in``,
output size ``n_out``, scale ``s``)::

    x(i) = i / s + (n_in - 1) / 2 - (n_out - 1) / (2 s)

and sums the input over the ``Kh x Kw`` pixels of its window (``K`` pixels per axis centred on
``x(i)``, see :mod:`vision_kernels.ops.cc_conv_grid`), weighted by the filter at the pixels' offsets.
The offsets of output ``i`` depend only on its phase ``py(i)``, so the weights are given per
(phase_y, phase_x) pair::

    out[b, o, i, j] = bias[o] + sum_{c, ky, kx} weight[py(i), px(j), o, c, ky, kx] * in[b, c, y0(i) + ky, x0(j) + kx]

with ``y0(i)`` the first row of output i's window and border taps reading zero (``"zeros"``) or the
edge pixel (``"replicate"``). A continuous filter (``vision_kernels.nn.CCConv2d``) produces ``weight``
by evaluating itself at ``cc_conv2d_grid(...).tap_offsets()``. At scale 1 there is one phase and the
offsets are the integers ``-(K-1)/2 .. (K-1)/2`` (odd K): the op is ``F.conv2d(input, weight[0, 0],
bias, padding=K // 2)``.

Kernels: a gather-GEMM per group of outputs sharing a phase pair, with the im2col columns gathered from
the input on the fly (no im2col buffer). Gradients: to the input, the same gather-GEMM on the
transposed plan (each input pixel gathers the outputs that read it; inputs with the same pattern of
(phase, tap) pairs share weights, read from the forward weight through those pairs); to the weights,
a GEMM reducing over each group's pixels; to the bias, a sum over grad.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import ArgCheck, shape_string
from ._declare import Backend, Native, Target, declare
from ._interop import accepts_arrays
from .cc_conv_grid import (
    PADDING_MODES,
    AxisPlan,
    axis_grid,
    check_support,
    forward_plan,
    input_grad_plan,
    resolve_output,
)

__all__ = ["cc_conv2d"]

FUNCTION = "vision_kernels.cc_conv2d"
GRAD_INPUT = "vision_kernels.cc_conv2d_grad_input"
GRAD_WEIGHT = "vision_kernels.cc_conv2d_grad_weight"


# ---------------------------------------------------------------- checks and plans


def _check_geometry(
    check: ArgCheck, size: Sequence[int], scale: Sequence[float], support: Sequence[int], padding_mode: str
) -> None:
    if len(size) != 2 or any(int(n) < 1 for n in size):
        check.fail("size", f"must be two sizes >= 1 (height, width), got {list(size)}")
    if len(scale) != 2 or not all(math.isfinite(s) and s > 0 for s in scale):
        check.fail("scale", f"must be two finite scales > 0 (height, width), got {list(scale)}")
    check.choice(padding_mode, "padding_mode", PADDING_MODES)
    check_support((int(support[0]), int(support[1])), (float(scale[0]), float(scale[1])), check.function, "weight")


def _check_input(check: ArgCheck, input: Tensor, name: str = "input") -> None:
    check.rank(input, name, 4, "[B, C, H, W]")
    check.floating(input, name)
    check.at_least(input, name, 1, 1, "C, the channels")
    check.at_least(input, name, 2, 1, "H")
    check.at_least(input, name, 3, 1, "W")


def _check_forward(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_size: Sequence[int],
    scale: Sequence[float],
    padding_mode: str,
) -> tuple[AxisPlan, AxisPlan]:
    """Shape, dtype and device checks of cc_conv2d; returns the row and column plans."""
    check = ArgCheck(FUNCTION)
    _check_input(check, input)
    check.rank(weight, "weight", 6, "[Py, Px, O, C, Kh, Kw]")
    check.same_dtype(input, "input", weight, "weight")
    check.same_device(input, "input", weight, "weight")
    check.size(weight, "weight", 3, input.shape[1], "C, the channels of input")
    if bias is not None:
        check.rank(bias, "bias", 1, "[O]")
        check.same_dtype(input, "input", bias, "bias")
        check.same_device(input, "input", bias, "bias")
        check.size(bias, "bias", 0, weight.shape[2], "O, the output channels of weight")
    support = (int(weight.shape[4]), int(weight.shape[5]))
    _check_geometry(check, out_size, scale, support, padding_mode)
    height, width = int(input.shape[2]), int(input.shape[3])
    rows = forward_plan(height, int(out_size[0]), float(scale[0]), support[0], padding_mode)
    cols = forward_plan(width, int(out_size[1]), float(scale[1]), support[1], padding_mode)
    if (weight.shape[0], weight.shape[1]) != (rows.groups, cols.groups):
        check.fail(
            "weight",
            f"must have {rows.groups} x {cols.groups} phases in dimensions 0 and 1 for the grid "
            f"{height} x {width} -> {out_size[0]} x {out_size[1]} at scale ({scale[0]}, {scale[1]}) "
            f"(see vision_kernels.ops.cc_conv2d_grid), got shape {shape_string(weight.shape)}",
        )
    return rows, cols


def _none(input: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A 0-element tensor: "no bias" / "no pairs" for the native calls."""
    return torch.empty((0,), dtype=dtype or input.dtype, device=input.device)


def _plans(rows: AxisPlan, cols: AxisPlan, device: torch.device) -> tuple[Tensor, ...]:
    """The row then column plan tables ``(taps, group, order, offsets)`` on ``device`` (cached per device)."""
    return (*rows.tensors(device), *cols.tensors(device))


def _gather_gemm(
    target: Target, input: Tensor, weight: Tensor, bias: Tensor | None, rows: AxisPlan, cols: AxisPlan, out: Tensor
) -> Native[Tensor]:
    """``out`` and the native arguments of ``cc_conv_gather_gemm`` (csrc/cc_conv/cc_conv_cpu.h).

    Forward plans have no pairs (the weight is read as it is); input-gradient plans carry the (phase, tap)
    pairs through which the forward weight is read. The fake kernel needs no tables (they are cached per
    device, so never built from fake tensors).
    """
    if not target.real:
        return Native(out)
    row_pairs, col_pairs = (plan.pairs_on(input.device) for plan in (rows, cols))
    if row_pairs is None or col_pairs is None:
        row_pairs = col_pairs = _none(input, torch.int64)
    bias = bias if bias is not None else _none(input)
    args = (input, weight, bias, row_pairs, col_pairs, *_plans(rows, cols, input.device), out)
    return Native(out, args=args)


# ---------------------------------------------------------------- forward op


@declare("vision_kernels::cc_conv2d", native="cc_conv_gather_gemm")
def _cc_conv2d_op(
    target: Target,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_size: list[int],
    scale: list[float],
    padding_mode: str,
    check_finite: bool,
) -> Native[Tensor]:
    rows, cols = _check_forward(input, weight, bias, out_size, scale, padding_mode)
    check = ArgCheck(FUNCTION)
    if check_finite and target.real:
        check.finite(input, "input")
        check.finite(weight, "weight")
        if bias is not None:
            check.finite(bias, "bias")
    shape = (input.shape[0], weight.shape[2], int(out_size[0]), int(out_size[1]))
    if target.real:
        check.allocation(shape, input.dtype, input.device, "size")
    out = input.new_empty(shape)  # [B, O, Hout, Wout]
    return _gather_gemm(target, input, weight, bias, rows, cols, out)


# ---------------------------------------------------------------- gradient ops


def _check_grad(check: ArgCheck, grad: Tensor, other: Tensor, other_name: str) -> None:
    check.rank(grad, "grad", 4, "[B, O, Hout, Wout]")
    check.floating(grad, "grad")
    check.same_dtype(grad, "grad", other, other_name)
    check.same_device(grad, "grad", other, other_name)


@declare("vision_kernels::cc_conv2d_grad_input", native="cc_conv_gather_gemm")
def _grad_input_op(
    target: Target, grad: Tensor, weight: Tensor, in_size: list[int], scale: list[float], padding_mode: str
) -> Native[Tensor]:
    check = ArgCheck(GRAD_INPUT)
    _check_grad(check, grad, weight, "weight")
    check.rank(weight, "weight", 6, "[Py, Px, O, C, Kh, Kw]")
    check.size(weight, "weight", 2, grad.shape[1], "O, the channels of grad")
    support = (int(weight.shape[4]), int(weight.shape[5]))
    _check_geometry(check, in_size, scale, support, padding_mode)
    out_h, out_w = int(grad.shape[2]), int(grad.shape[3])
    plans = []
    for axis, (n_in, n_out, s, k) in enumerate(zip(in_size, (out_h, out_w), scale, support, strict=True)):
        phases = axis_grid(int(n_in), n_out, float(s), k).phases
        if weight.shape[axis] != phases:
            check.fail(
                "weight", f"must have {phases} phases in dimension {axis}, got shape {shape_string(weight.shape)}"
            )
        plans.append(input_grad_plan(int(n_in), n_out, float(s), k, padding_mode))
    out = grad.new_empty((grad.shape[0], weight.shape[3], int(in_size[0]), int(in_size[1])))  # [B, C, H, W]
    return _gather_gemm(target, grad, weight, None, plans[0], plans[1], out)


def _weight_grad(backend: Backend, grad: Tensor, input: Tensor, rows: AxisPlan, cols: AxisPlan, shape: tuple) -> Tensor:
    """``cc_conv_weight_grad``: the CPU kernel writes the result; the CUDA kernel writes partial sums over S
    consecutive ranges of each group's (batch, pixel) pairs into its workspace, added up here."""
    plans = _plans(rows, cols, input.device)
    if not backend.cuda_source:
        out = input.new_empty(shape)
        backend.call("cc_conv_weight_grad", grad, input, *plans, out)
        return out
    largest = int((rows.offsets.diff().max() * cols.offsets.diff().max()).item()) * int(input.shape[0])
    splits = max(1, min(32, largest // 4096))
    accumulate = torch.float64 if input.dtype == torch.float64 else torch.float32
    partial = torch.empty((splits, *shape), dtype=accumulate, device=input.device)
    backend.call("cc_conv_weight_grad", grad, input, *plans, workspace=(partial,))
    return partial.sum(0).to(input.dtype)


@declare("vision_kernels::cc_conv2d_grad_weight")
def _grad_weight_op(
    target: Target, grad: Tensor, input: Tensor, support: list[int], scale: list[float], padding_mode: str
) -> Native[Tensor]:
    check = ArgCheck(GRAD_WEIGHT)
    _check_grad(check, grad, input, "input")
    _check_input(check, input)
    check.size(grad, "grad", 0, input.shape[0], "B, the batch of input")
    _check_geometry(check, grad.shape[2:], scale, support, padding_mode)
    rows = forward_plan(int(input.shape[2]), int(grad.shape[2]), float(scale[0]), int(support[0]), padding_mode)
    cols = forward_plan(int(input.shape[3]), int(grad.shape[3]), float(scale[1]), int(support[1]), padding_mode)
    shape = (rows.groups, cols.groups, grad.shape[1], input.shape[1], int(support[0]), int(support[1]))
    return Native(input.new_empty(shape), run=lambda backend: _weight_grad(backend, grad, input, rows, cols, shape))


# ---------------------------------------------------------------- autograd


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    input, weight, bias, out_size, scale, padding_mode, _ = inputs
    ctx.save_for_backward(input, weight)
    ctx.geometry = (list(scale), padding_mode)  # type: ignore[attr-defined]


def _backward(ctx, grad: Tensor):  # type: ignore[no-untyped-def]
    input, weight = ctx.saved_tensors
    scale, padding_mode = ctx.geometry
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        in_size = [int(input.shape[2]), int(input.shape[3])]
        grad_input = _grad_input_op(grad, weight, in_size, scale, padding_mode)
    if ctx.needs_input_grad[1]:
        support = [int(weight.shape[4]), int(weight.shape[5])]
        grad_weight = _grad_weight_op(grad, input, support, scale, padding_mode)
    if ctx.needs_input_grad[2]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_input, grad_weight, grad_bias, None, None, None, None


_cc_conv2d_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------- public wrapper


@accepts_arrays("input", "weight", "bias")
def cc_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    size: Sequence[int] | int | None = None,
    scale: Sequence[float] | float | None = None,
    padding_mode: str = "zeros",
    check_finite: bool = True,
) -> Tensor:
    """Continuous convolution on the centred grid, at any output size or scale.

    ``out[b, o, i, j] = bias[o]
    + sum_{c, ky, kx} weight[py(i), px(j), o, c, ky, kx] * input[b, c, y0(i) + ky, x0(j) + kx]``

    where output row ``i`` sits at ``y(i) = i / sy + (H - 1) / 2 - (H' - 1) / (2 sy)`` on the input,
    reads rows ``y0(i) .. y0(i) + Kh - 1`` (the ``Kh`` rows in ``[y(i) - Kh/2, y(i) + Kh/2)``) and uses
    the weights of its phase ``py(i)`` (columns likewise). See :func:`cc_conv2d_grid` for the phases and
    the tap offsets at which a continuous filter produces ``weight``.

    Args:
        input: ``[B, C, H, W]`` floating tensor (float32, float64, float16, bfloat16), any strides.
        weight: ``[Py, Px, O, C, Kh, Kw]`` per-phase weights, same dtype and device; ``(Py, Px)`` must be
            ``cc_conv2d_grid((H, W), (Kh, Kw), size=..., scale=...).phases``.
        bias: ``[O]`` or None.
        size: output ``(H', W')`` (or one int for both).
        scale: ``(sy, sx)`` (or one number for both), any positive values, different per axis allowed.
            With only ``scale``, ``H' = floor(H * sy)``; with only ``size``, ``sy = H' / H``; with both,
            both are used as given; with neither, scale 1 (an ordinary "same" convolution).
        padding_mode: ``"zeros"`` (taps outside the input read 0, as ``F.conv2d``) or ``"replicate"``
            (they read the nearest edge pixel).
        check_finite: raise ValueError if input, weight or bias hold NaN or Inf.

    Returns:
        ``[B, O, H', W']`` of the input's dtype (accumulated in float32, float64 for float64).
        Differentiable in input, weight and bias (once: the gradient ops have no gradient themselves).

    Raises:
        ValueError: scales that are not finite and > 0, an output size below 1, a support with
            ``K * s < 1`` (some input pixels would be in no window), a channel mismatch between input
            and weight, a weight whose phase count does not match the grid, NaN/Inf.
        TypeError: non-floating or mismatched dtypes.
    """
    check = ArgCheck(FUNCTION)
    check.tensor(input, "input")
    check.tensor(weight, "weight")
    if bias is not None:
        check.tensor(bias, "bias")
    check.rank(input, "input", 4, "[B, C, H, W]")
    out_size, scales = resolve_output((int(input.shape[2]), int(input.shape[3])), size, scale, function=FUNCTION)
    return _cc_conv2d_op(input, weight, bias, list(out_size), list(scales), padding_mode, check_finite)
