"""Weight-space PCA projection and reconstruction (weights2weights).

    pca_project(w, mean, std, V)      c = ((w - mean) / std) @ V            w: [B, D], V: [D, K] -> [B, K]
    pca_reconstruct(c, mean, std, V)  w = (c @ V^T) * std + mean            c: [B, K]            -> [B, D]

Gradients: dL/dc of reconstruct is ``(dL/dw * std) @ V`` and dL/dw of project is
``(dL/dc @ V^T) / std``; both run on the same kernels. Gradients to mean, std and basis exist
too (plain torch, materializing [B, D]: meant for occasional use).

Storage and precision: ``w`` (or the gradient) and ``basis`` may be float16/bfloat16 with float32
accumulation, or float32 / float64; ``w`` may also be in the accumulation dtype of a low-precision
basis. mean and std are used in the accumulation dtype. Coefficients come back in the
accumulation dtype; reconstructed weights in ``out_dtype`` (default: the basis dtype).

Where the work goes (a deliberate split, docs/DESIGN.md section 1):

* Small batches (B <= 16, e.g. one model per step of an inversion): fused C++/CUDA kernels read
  the basis once in its storage dtype, standardize ``w`` on the fly (project) or apply
  ``* std + mean`` and the cast in the epilogue (reconstruct). This is memory bound, so fusing
  saves the traffic of an upcast basis and of every temporary. A column-major basis (e.g. a
  QR factor) runs on its row-major transpose with the two kernels' roles swapped.
* Large batches (projecting a dataset, reconstructing thousands of models): the cost is a dense
  GEMM of 2 B D K flops that the vendor library (MKL/oneDNN on CPU, cuBLAS on GPU) runs near
  peak, which a hand-written kernel would not beat. The native kernels do the fused parts
  around it: blocks of ``(w - mean) / std`` are dequantized and standardized straight into a
  float32 block of at most ``BLOCK_ELEMENTS`` values that feeds the GEMM (the standardized matrix
  is never materialized), and the reconstruct epilogue ``store(acc * std + mean)`` runs in place
  on the GEMM's output or into the low-precision result. Peak extra memory is one block instead
  of the reference's two [B, D] temporaries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._checks import FLOATING, ArgCheck, dtype_name
from ._declare import Backend, Native, Target, declare
from ._interop import accepts_arrays

__all__ = ["pca_project", "pca_reconstruct", "FUSED_MAX_ROWS"]

PROJECT = "vision_kernels.pca_project"
RECONSTRUCT = "vision_kernels.pca_reconstruct"

FUSED_MAX_ROWS = 16  # batches up to this many rows use the fused kernels
BLOCK_ELEMENTS = 1 << 24  # accumulation-dtype elements of one standardized / accumulated block
_MIN_BLOCK_COLUMNS = 256


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- argument checks


def _check_vector(check: ArgCheck, t: Tensor, name: str, dims: int, anchor: Tensor) -> None:
    check.rank(t, name, 1, "[D]")
    check.floating(t, name)
    check.size(t, name, 0, dims, "D, the weight dimension")
    check.same_device(anchor, "basis", t, name)


def _check_basis(check: ArgCheck, basis: Tensor, anchor: Tensor, anchor_name: str) -> None:
    check.rank(basis, "basis", 2, "[D, K]")
    check.floating(basis, "basis")
    check.at_least(basis, "basis", 0, 1, "D, the weight dimension")
    check.same_device(basis, "basis", anchor, anchor_name)


def _check_mean_std(check: ArgCheck, mean: Tensor | None, std: Tensor, basis: Tensor) -> None:
    if mean is not None:
        _check_vector(check, mean, "mean", basis.shape[0], basis)
    _check_vector(check, std, "std", basis.shape[0], basis)


def _check_storage_dtype(check: ArgCheck, t: Tensor, name: str, basis: Tensor) -> None:
    allowed = {basis.dtype, accumulation_dtype(basis.dtype)}
    if t.dtype not in allowed:
        names = " or ".join(dtype_name(d) for d in sorted(allowed, key=str))
        check.fail(
            name,
            f"must have the dtype of 'basis' or its accumulation dtype ({names}), got {dtype_name(t.dtype)}",
            TypeError,
        )


def _check_operands(
    function: str, x: Tensor, name: str, layout: str, mean: Tensor | None, std: Tensor, basis: Tensor
) -> ArgCheck:
    """Checks shared by both ops; ``x`` ([B, D] weights or [B, K] coefficients) must match ``basis``
    along its dimension 1 (project: basis dimension 0, reconstruct: basis dimension 1)."""
    check = ArgCheck(function)
    check.rank(x, name, 2, layout)
    check.floating(x, name)
    _check_basis(check, basis, x, name)
    axis, what = (0, f"D, the width of {name}") if name == "w" else (1, "K, the number of coefficients")
    if basis.shape[axis] != x.shape[1]:
        check.fail(
            "basis",
            f"must have size {x.shape[1]} in dimension {axis} ({what}), got shape [{basis.shape[0]}, {basis.shape[1]}]",
        )
    _check_mean_std(check, mean, std, basis)
    return check


def _check_project(w: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor) -> None:
    check = _check_operands(PROJECT, w, "w", "[B, D]", mean, std, basis)
    _check_storage_dtype(check, w, "w", basis)


def _check_reconstruct(
    coeffs: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor, out_dtype: torch.dtype | None
) -> None:
    check = _check_operands(RECONSTRUCT, coeffs, "coeffs", "[B, K]", mean, std, basis)
    if out_dtype is not None and out_dtype not in FLOATING:
        check.fail("out_dtype", f"must be a floating dtype, got {out_dtype}", TypeError)


def _check_values(function: str, std: Tensor, named: dict[str, Tensor | None], check_finite: bool) -> None:
    check = ArgCheck(function)
    bad = ~(std > 0)
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        check.fail(
            "std",
            f"must be > 0 everywhere (fit the space with a std floor), got {std[index].item()} at index ({index},)",
        )
    if check_finite:
        check.finite(std, "std")
        for name, t in named.items():
            if t is not None:
                check.finite(t, name)


# ---------------------------------------------------------------- native calls (csrc/pca_project/pca_project_ops.h)


def _project_fused(backend: Backend, x: Tensor, shift: Tensor, scale: Tensor, basis: Tensor, out: Tensor) -> None:
    workspace: tuple[Tensor, ...] = ()
    if backend.cuda_source:  # [S, B, K] partial sums over S chunks of D, added in order by the kernel
        chunks = max(1, min(128, -(-x.shape[1] // 512)))
        workspace = (out.new_empty((chunks, out.shape[0], out.shape[1])),)
    backend.call("pca_project_fused", x, shift, scale, basis, out, workspace=workspace)


def _column_major(basis: Tensor) -> bool:
    """A [D, K] basis stored column by column (e.g. ``torch.linalg.qr(...).Q``): the fused kernels
    then run on its row-major transpose with the roles of the two kernels swapped."""
    return basis.shape[1] > 1 and basis.stride(0) == 1 and basis.stride(1) >= basis.shape[0]


def _columns_per_block(rows: int, dims: int) -> int:
    columns = max(_MIN_BLOCK_COLUMNS, BLOCK_ELEMENTS // max(rows, 1))
    return min(dims, columns - columns % 64 if columns > 64 else columns)


def _shift_slice(shift: Tensor, start: int, stop: int) -> Tensor:
    return shift[start:stop] if shift.numel() else shift


def _prepare_vectors(mean: Tensor | None, std: Tensor, accumulate: torch.dtype, invert: bool) -> tuple[Tensor, Tensor]:
    scale = std.to(accumulate)  # [D]
    scale = scale.reciprocal() if invert else scale.contiguous()
    shift = mean.to(accumulate).contiguous() if mean is not None else scale.new_empty((0,))  # [D] or [0]
    return shift, scale


# ---------------------------------------------------------------- implementations


def _project(backend: Backend, w: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor) -> Tensor:
    accumulate = accumulation_dtype(basis.dtype)
    rows, dims = w.shape
    components = basis.shape[1]
    shift, scale = _prepare_vectors(mean, std, accumulate, invert=True)
    out = w.new_zeros((rows, components), dtype=accumulate)  # [B, K]
    if rows == 0 or components == 0:
        return out
    if rows <= FUSED_MAX_ROWS:
        if _column_major(basis):
            # c[b, k] = sum_d z[b, d] V^T[k, d]: the reconstruct kernel's dot products over rows of V^T.
            z = w.new_empty((rows, dims), dtype=accumulate)  # [B, D], small
            backend.call("pca_standardize", w, shift, scale, z)
            ones = scale.new_ones(components)
            backend.call("pca_reconstruct_fused", z, basis.T, ones, shift.new_empty((0,)), out)
        else:
            _project_fused(backend, w, shift, scale, basis, out)
        return out
    # Blocked: standardize a [rows, columns] block of w natively, then one GEMM per block.
    row_block = min(rows, max(FUSED_MAX_ROWS, BLOCK_ELEMENTS // _MIN_BLOCK_COLUMNS))
    for r0 in range(0, rows, row_block):
        r1 = min(rows, r0 + row_block)
        columns = _columns_per_block(r1 - r0, dims)
        block = w.new_empty((r1 - r0, columns), dtype=accumulate)  # [b, c]
        for d0 in range(0, dims, columns):
            d1 = min(dims, d0 + columns)
            z = block[:, : d1 - d0]
            backend.call("pca_standardize", w[r0:r1, d0:d1], _shift_slice(shift, d0, d1), scale[d0:d1], z)
            out[r0:r1].addmm_(z, basis[d0:d1].to(accumulate))  # [b, K] += [b, c] @ [c, K]
    return out


def _reconstruct(
    backend: Backend, coeffs: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor, out_dtype: torch.dtype | None
) -> Tensor:
    accumulate = accumulation_dtype(basis.dtype)
    target = out_dtype or basis.dtype
    native_dtype = target if target in (basis.dtype, accumulate) else accumulate
    rows = coeffs.shape[0]
    dims = basis.shape[0]
    shift, scale = _prepare_vectors(mean, std, accumulate, invert=False)
    c = coeffs.to(accumulate).contiguous()  # [B, K]
    out = coeffs.new_empty((rows, dims), dtype=native_dtype)  # [B, D]
    if rows == 0:
        return out.to(target)
    if basis.shape[1] == 0:  # no components: every model is the mean
        out.copy_(shift.expand(rows, dims) if shift.numel() else torch.zeros_like(out))
    elif rows <= FUSED_MAX_ROWS and _column_major(basis):
        # c @ V^T accumulates rows of V^T: the project kernel's pass, then the epilogue kernel.
        accumulated = c.new_empty((rows, dims))  # [B, D], small
        _project_fused(backend, c, shift.new_empty((0,)), c.new_ones(basis.shape[1]), basis.T, accumulated)
        backend.call("pca_destandardize", accumulated, scale, shift, out)
    elif rows <= FUSED_MAX_ROWS:
        backend.call("pca_reconstruct_fused", c, basis, scale, shift, out)
    elif native_dtype == accumulate and basis.dtype == accumulate:
        # GEMM straight into the result, then the epilogue in place.
        torch.mm(c, basis.T, out=out)
        backend.call("pca_destandardize", out, scale, shift, out)
    else:
        columns = _columns_per_block(rows, dims)
        for d0 in range(0, dims, columns):
            d1 = min(dims, d0 + columns)
            accumulated = c @ basis[d0:d1].to(accumulate).T  # [B, c]
            backend.call("pca_destandardize", accumulated, scale[d0:d1], _shift_slice(shift, d0, d1), out[:, d0:d1])
    return out if native_dtype == target else out.to(target)


# ---------------------------------------------------------------- pca_project op


@declare("vision_kernels::pca_project")
def _pca_project_op(
    target: Target, w: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor, check_finite: bool
) -> Native[Tensor]:
    _check_project(w, mean, std, basis)
    if target.real:
        _check_values(PROJECT, std, {"w": w, "mean": mean, "basis": basis}, check_finite)
    out = w.new_empty((w.shape[0], basis.shape[1]), dtype=accumulation_dtype(basis.dtype))  # [B, K]
    return Native(out, run=lambda backend: _project(backend, w, mean, std, basis))


def _project_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    w, mean, std, basis, _ = inputs
    ctx.has_mean = mean is not None
    ctx.save_for_backward(w, mean if mean is not None else std.new_empty(0), std, basis)


def _project_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    w, mean, std, basis = ctx.saved_tensors  # [B, D], [D] or [0], [D], [D, K]; grad: [B, K]
    mean = mean if ctx.has_mean else None
    accumulate = accumulation_dtype(basis.dtype)
    inverse_std = std.to(accumulate).reciprocal()
    grad_w_acc = None
    if any(ctx.needs_input_grad[:3]):
        # dL/dw = (grad @ V^T) / std
        grad_w_acc = _pca_reconstruct_op(grad.to(accumulate), None, inverse_std, basis, accumulate, False)  # [B, D]
    grad_w = grad_mean = grad_std = grad_basis = None
    if ctx.needs_input_grad[0]:
        assert grad_w_acc is not None  # computed above whenever w, mean or std needs a gradient
        grad_w = grad_w_acc.to(w.dtype)
    if ctx.needs_input_grad[1]:
        assert grad_w_acc is not None and mean is not None  # a mean that needs a gradient was given
        grad_mean = (-grad_w_acc.sum(0)).to(mean.dtype)
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        centered = w.to(accumulate) - (mean.to(accumulate) if mean is not None else 0)  # [B, D]
        standardized = centered * inverse_std
        if ctx.needs_input_grad[2]:
            grad_std = (-(grad_w_acc * standardized).sum(0)).to(std.dtype)
        if ctx.needs_input_grad[3]:
            grad_basis = (standardized.T @ grad.to(accumulate)).to(basis.dtype)  # [D, K]
    return grad_w, grad_mean, grad_std, grad_basis, None


_pca_project_op.register_autograd(_project_backward, setup_context=_project_setup)


# ---------------------------------------------------------------- pca_reconstruct op


@declare("vision_kernels::pca_reconstruct")
def _pca_reconstruct_op(
    target: Target,
    coeffs: Tensor,
    mean: Tensor | None,
    std: Tensor,
    basis: Tensor,
    out_dtype: torch.dtype | None,
    check_finite: bool,
) -> Native[Tensor]:
    _check_reconstruct(coeffs, mean, std, basis, out_dtype)
    if target.real:
        _check_values(RECONSTRUCT, std, {"coeffs": coeffs, "mean": mean, "basis": basis}, check_finite)
    out = coeffs.new_empty((coeffs.shape[0], basis.shape[0]), dtype=out_dtype or basis.dtype)  # [B, D]
    return Native(out, run=lambda backend: _reconstruct(backend, coeffs, mean, std, basis, out_dtype))


def _reconstruct_setup(ctx: Any, inputs: tuple, output: Tensor) -> None:
    coeffs, mean, std, basis, _, _ = inputs
    ctx.has_mean = mean is not None
    ctx.mean_dtype = mean.dtype if mean is not None else None
    ctx.save_for_backward(coeffs, std, basis)


def _reconstruct_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    coeffs, std, basis = ctx.saved_tensors  # [B, K], [D], [D, K]; grad: [B, D]
    accumulate = accumulation_dtype(basis.dtype)
    grad_acc = grad.to(accumulate)
    grad_c = grad_mean = grad_std = grad_basis = None
    if ctx.needs_input_grad[0]:
        # dL/dc = (grad * std) @ V, i.e. a projection with std' = 1 / std and no mean.
        grad_c = _pca_project_op(grad_acc, None, std.to(accumulate).reciprocal(), basis, False).to(coeffs.dtype)
    if ctx.needs_input_grad[1]:
        grad_mean = grad_acc.sum(0).to(ctx.mean_dtype)
    if ctx.needs_input_grad[2]:
        product = coeffs.to(accumulate) @ basis.to(accumulate).T  # [B, D]
        grad_std = (grad_acc * product).sum(0).to(std.dtype)
    if ctx.needs_input_grad[3]:
        scaled = grad_acc * std.to(accumulate)  # [B, D]
        grad_basis = (scaled.T @ coeffs.to(accumulate)).to(basis.dtype)  # [D, K]
    return grad_c, grad_mean, grad_std, grad_basis, None, None


_pca_reconstruct_op.register_autograd(_reconstruct_backward, setup_context=_reconstruct_setup)


# ---------------------------------------------------------------- public functions


def _check_tensors(function: str, name: str, x: object, mean: object, std: object, basis: object) -> None:
    check = ArgCheck(function)
    for value, argument in ((x, name), (mean, "mean"), (std, "std"), (basis, "basis")):
        if value is not None or argument != "mean":
            check.tensor(value, argument)


@accepts_arrays("w", "mean", "std", "basis")
def pca_project(w: Tensor, mean: Tensor | None, std: Tensor, basis: Tensor, *, check_finite: bool = True) -> Tensor:
    """Coefficients of weights in a standardized PCA basis (the weights2weights projection).

    ``c[b, k] = sum_d (w[b, d] - mean[d]) / std[d] * basis[d, k]``

    The standardization is fused with the projection: the standardized matrix is never built
    (see the module docstring for how small and large batches are computed).

    Args:
        w: ``[B, D]`` (or ``[D]``) weights, in the basis dtype or its accumulation dtype.
        mean: ``[D]`` per-dimension mean, or None for zero.
        std: ``[D]`` per-dimension standard deviation, every entry > 0.
        basis: ``[D, K]`` orthonormal components (float32, float64, float16 or bfloat16), any strides
            (row-major is fastest).
        check_finite: raise ValueError if ``w``, ``mean``, ``std`` or ``basis`` holds NaN or Inf
            (one pass over each; pass False in hot loops once the inputs are known to be clean).

    Returns:
        ``[B, K]`` (or ``[K]``) coefficients in float32 (float64 for a float64 basis).
        Differentiable in all four inputs. Raises ValueError for a basis of the wrong width, a
        zero or negative std, NaN/Inf; TypeError for mismatched dtypes.
    """
    _check_tensors(PROJECT, "w", w, mean, std, basis)
    if w.dim() == 1:
        return _pca_project_op(w.unsqueeze(0), mean, std, basis, check_finite)[0]
    return _pca_project_op(w, mean, std, basis, check_finite)


@accepts_arrays("coeffs", "mean", "std", "basis")
def pca_reconstruct(
    coeffs: Tensor,
    mean: Tensor | None,
    std: Tensor,
    basis: Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Weights from PCA coefficients (the weights2weights unprojection).

    ``w[b, d] = std[d] * sum_k coeffs[b, k] * basis[d, k] + mean[d]``

    Gradient to the coefficients (used by inversion): ``dL/dc = (dL/dw * std) @ basis``, on the
    same fused kernels.

    Args:
        coeffs: ``[B, K]`` (or ``[K]``) coefficients, any floating dtype (used in the accumulation dtype).
        mean: ``[D]`` per-dimension mean, or None for zero.
        std: ``[D]`` per-dimension standard deviation, every entry > 0.
        basis: ``[D, K]`` components (float32, float64, float16 or bfloat16).
        out_dtype: dtype of the result (default: the basis dtype); computed in float32 (float64
            for a float64 basis) and rounded once.
        check_finite: raise ValueError on NaN/Inf in any input.

    Returns:
        ``[B, D]`` (or ``[D]``) weights. Differentiable in all four inputs.
    """
    _check_tensors(RECONSTRUCT, "coeffs", coeffs, mean, std, basis)
    if coeffs.dim() == 1:
        return _pca_reconstruct_op(coeffs.unsqueeze(0), mean, std, basis, out_dtype, check_finite)[0]
    return _pca_reconstruct_op(coeffs, mean, std, basis, out_dtype, check_finite)


def standardize_block(x: Tensor, mean: Tensor | None, inverse_std: Tensor, out: Tensor | None = None) -> Tensor:
    """``(x - mean) * inverse_std`` in the accumulation dtype of ``x``, by the native dequantize +
    standardize kernel (no autograd; used by the streaming PCA fit on blocks of rows).

    ``x``: ``[B, D]`` any floating dtype and strides; ``mean``/``inverse_std``: ``[D]`` (converted to
    the accumulation dtype); ``out``: optional ``[B, D]`` buffer in the accumulation dtype.
    """
    accumulate = accumulation_dtype(x.dtype)
    shift = mean.to(accumulate).contiguous() if mean is not None else x.new_empty((0,), dtype=accumulate)
    scale = inverse_std.to(accumulate).contiguous()
    if out is None:
        out = x.new_empty(x.shape, dtype=accumulate)
    Backend.for_tensor(x).call("pca_standardize", x, shift, scale, out)
    return out
