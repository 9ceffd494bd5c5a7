"""pca_project / pca_reconstruct: parity with the reference (CPU kernel and emulated CUDA kernel,
fused and blocked paths), every dtype, strides, gradients, torch.library contracts, bad input."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from vision_kernels.ops import pca_project, pca_reconstruct
from vision_kernels.reference import pca_project as reference
from vision_kernels.testing import assert_low_precision_parity, emulated

# The module, not the function of the same name that vision_kernels.ops exports.
pca_module = importlib.import_module("vision_kernels.ops.pca_project")

PROJECT = torch.ops.vision_kernels.pca_project
RECONSTRUCT = torch.ops.vision_kernels.pca_reconstruct
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPE_IDS = ["float32", "float64", "float16", "bfloat16"]


def cpu_project(w, mean, std, basis, check_finite=True):
    return pca_project(w, mean, std, basis, check_finite=check_finite)


def emulated_project(w, mean, std, basis, check_finite=True):
    return emulated(PROJECT)(w, mean, std, basis, check_finite)


def cpu_reconstruct(c, mean, std, basis, out_dtype=None, check_finite=True):
    return pca_reconstruct(c, mean, std, basis, out_dtype=out_dtype, check_finite=check_finite)


def emulated_reconstruct(c, mean, std, basis, out_dtype=None, check_finite=True):
    return emulated(RECONSTRUCT)(c, mean, std, basis, out_dtype, check_finite)


PROJECTS = [
    pytest.param(cpu_project, id="cpu"),
    pytest.param(emulated_project, id="cuda_emulated", marks=pytest.mark.emulation),
]
RECONSTRUCTS = [
    pytest.param(cpu_reconstruct, id="cpu"),
    pytest.param(emulated_reconstruct, id="cuda_emulated", marks=pytest.mark.emulation),
]


def make_space(dims: int, components: int, dtype: torch.dtype, generator: torch.Generator | None = None):
    mean = (torch.randn(dims, generator=generator) * 0.5).to(dtype)
    std = (torch.rand(dims, generator=generator) + 0.25).to(dtype)
    basis = torch.randn(dims, components, generator=generator).to(dtype) / dims**0.5
    return mean, std, basis


def exact(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.double()


def assert_project_parity(got, w, mean, std, basis, what=""):
    want = reference.pca_project(w, mean, std, basis)
    truth = reference.pca_project(exact(w), exact(mean), exact(std), exact(basis))
    assert got.dtype == want.dtype and got.shape == want.shape, what
    floor = (1e-12 if basis.dtype == torch.float64 else 2e-6) * (1 + truth.abs().max().item() if truth.numel() else 1)
    assert_low_precision_parity(got, want, truth, factor=2.0, atol=floor, what=what)


def assert_reconstruct_parity(got, c, mean, std, basis, out_dtype=None, what=""):
    want = reference.pca_reconstruct(c, mean, std, basis, out_dtype)
    truth = reference.pca_reconstruct(exact(c), exact(mean), exact(std), exact(basis), torch.float64)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    floor = (1e-12 if basis.dtype == torch.float64 else 2e-6) * (1 + truth.abs().max().item() if truth.numel() else 1)
    assert_low_precision_parity(got, want, truth, factor=2.0, atol=floor, what=what)


@pytest.mark.parametrize("kernel", PROJECTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    ("rows", "dims", "components"),
    [(1, 1, 1), (3, 70, 5), (16, 131, 129), (17, 90, 33), (40, 257, 7), (3, 1100, 5)],
)
def test_project_parity(kernel, dtype, rows, dims, components) -> None:
    mean, std, basis = make_space(dims, components, dtype)
    w = (torch.randn(rows, dims) + 0.3).to(dtype)
    assert_project_parity(kernel(w, mean, std, basis), w, mean, std, basis, f"{dtype} {rows}x{dims}x{components}")


@pytest.mark.parametrize("kernel", RECONSTRUCTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    ("rows", "dims", "components"), [(1, 1, 1), (3, 70, 5), (16, 131, 129), (17, 90, 33), (40, 257, 7)]
)
def test_reconstruct_parity(kernel, dtype, rows, dims, components) -> None:
    mean, std, basis = make_space(dims, components, dtype)
    c = torch.randn(rows, components)
    assert_reconstruct_parity(kernel(c, mean, std, basis), c, mean, std, basis, None, f"{dtype} {rows}x{dims}")


@pytest.mark.parametrize("kernel", RECONSTRUCTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("rows", [2, 20])
def test_reconstruct_out_dtype(kernel, dtype, rows) -> None:
    mean, std, basis = make_space(50, 6, dtype)
    c = torch.randn(rows, 6, dtype=torch.float64)
    for out_dtype in (torch.float32, torch.float64, torch.bfloat16):
        got = kernel(c, mean, std, basis, out_dtype)
        assert_reconstruct_parity(got, c, mean, std, basis, out_dtype, f"{dtype}->{out_dtype}")


@pytest.mark.parametrize("kernel", PROJECTS)
@pytest.mark.parametrize("rows", [2, 20])
def test_project_float32_weights_on_low_precision_basis(kernel, rows) -> None:
    mean, std, basis = make_space(64, 9, torch.bfloat16)
    w = torch.randn(rows, 64)  # float32: the accumulation dtype of a bfloat16 basis
    assert_project_parity(kernel(w, mean, std, basis), w, mean, std, basis)


@pytest.mark.parametrize("kernel", PROJECTS)
@pytest.mark.parametrize("rows", [3, 30])
def test_project_strided_inputs_and_no_mean(kernel, rows) -> None:
    mean, std, basis = make_space(80, 12, torch.float32)
    w = torch.randn(80, rows).t()  # column-major [rows, 80]
    sub_basis = basis[:, 2:9]  # strided column slice [80, 7]
    broadcast_mean = torch.full((1,), 0.7).expand(80)  # stride 0
    assert not w.is_contiguous() and not sub_basis.is_contiguous()
    assert_project_parity(kernel(w, broadcast_mean, std, sub_basis), w, broadcast_mean, std, sub_basis)
    assert_project_parity(kernel(w, None, std, sub_basis), w, None, std, sub_basis)


@pytest.mark.parametrize("kernel", RECONSTRUCTS)
@pytest.mark.parametrize("rows", [3, 30])
def test_reconstruct_strided_inputs_and_no_mean(kernel, rows) -> None:
    mean, std, basis = make_space(80, 12, torch.float32)
    c = torch.randn(7, rows).t()
    sub_basis = basis[:, 2:9]
    assert_reconstruct_parity(kernel(c, mean, std, sub_basis), c, mean, std, sub_basis)
    assert_reconstruct_parity(kernel(c, None, std, sub_basis), c, None, std, sub_basis)


@pytest.mark.parametrize("project_kernel", PROJECTS)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["float32", "bfloat16", "float64"]
)
@pytest.mark.parametrize("rows", [1, 5])
def test_column_major_basis(project_kernel, dtype, rows) -> None:
    # A basis stored column by column (torch.linalg.qr's Q) runs the fused kernels on its transpose.
    mean, std, _ = make_space(300, 1, dtype)
    basis = torch.linalg.qr(torch.randn(300, 20, dtype=torch.float64)).Q.to(dtype)
    assert basis.stride() == (1, 300)
    w = torch.randn(rows, 300).to(dtype)
    assert_project_parity(project_kernel(w, mean, std, basis), w, mean, std, basis, str(dtype))
    reconstruct_kernel = emulated_reconstruct if project_kernel is emulated_project else cpu_reconstruct
    c = torch.randn(rows, 20)
    for out_dtype in (None, torch.float32):
        got = reconstruct_kernel(c, mean, std, basis, out_dtype)
        assert_reconstruct_parity(got, c, mean, std, basis, out_dtype, str(dtype))


def test_blocked_path_with_many_blocks(monkeypatch) -> None:
    # Shrink the block budget so a small problem runs through many row and column blocks.
    monkeypatch.setattr(pca_module, "BLOCK_ELEMENTS", 512)
    for dtype in (torch.float32, torch.bfloat16):
        mean, std, basis = make_space(700, 11, dtype)
        w = torch.randn(50, 700).to(dtype)
        assert_project_parity(pca_project(w, mean, std, basis), w, mean, std, basis, str(dtype))
        c = torch.randn(50, 11)
        assert_reconstruct_parity(pca_reconstruct(c, mean, std, basis), c, mean, std, basis, None, str(dtype))


def test_fused_and_blocked_paths_agree(monkeypatch) -> None:
    mean, std, basis = make_space(300, 20, torch.float32)
    w = torch.randn(10, 300)
    fused = pca_project(w, mean, std, basis)
    monkeypatch.setattr(pca_module, "FUSED_MAX_ROWS", 0)
    torch.testing.assert_close(pca_project(w, mean, std, basis), fused, rtol=1e-5, atol=1e-5)
    c = torch.randn(10, 20)
    blocked = pca_reconstruct(c, mean, std, basis)
    monkeypatch.setattr(pca_module, "FUSED_MAX_ROWS", 16)
    torch.testing.assert_close(pca_reconstruct(c, mean, std, basis), blocked, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", PROJECTS)
def test_project_empty(kernel) -> None:
    mean, std, basis = make_space(8, 3, torch.float32)
    assert kernel(torch.randn(0, 8), mean, std, basis).shape == (0, 3)
    out = kernel(torch.randn(4, 8), mean, std, basis[:, :0])
    assert out.shape == (4, 0)


@pytest.mark.parametrize("kernel", RECONSTRUCTS)
def test_reconstruct_empty_and_zero_components(kernel) -> None:
    mean, std, basis = make_space(8, 3, torch.float32)
    assert kernel(torch.randn(0, 3), mean, std, basis).shape == (0, 8)
    for rows in (2, 20):  # no components: every model is the mean
        out = kernel(torch.randn(rows, 0), mean, std, basis[:, :0])
        torch.testing.assert_close(out, mean.expand(rows, 8))


def test_round_trip_in_the_span() -> None:
    mean, std, _ = make_space(200, 1, torch.float64)
    basis = torch.linalg.qr(torch.randn(200, 15, dtype=torch.float64))[0]
    c = torch.randn(5, 15, dtype=torch.float64)
    torch.testing.assert_close(pca_project(pca_reconstruct(c, mean, std, basis), mean, std, basis), c)


def test_vector_inputs() -> None:
    mean, std, basis = make_space(30, 4, torch.float32)
    w = torch.randn(30)
    c = pca_project(w, mean, std, basis)
    assert c.shape == (4,)
    torch.testing.assert_close(c, pca_project(w[None], mean, std, basis)[0])
    assert pca_reconstruct(c, mean, std, basis).shape == (30,)


def test_64bit_offsets() -> None:
    # Rows 2^31 + 5 elements apart (pages never touched, so memory stays small).
    dims = 6
    stride = 2**31 + 5
    storage = torch.empty(stride + dims)
    rows = torch.randn(2, dims)
    storage[:dims] = rows[0]
    storage[stride : stride + dims] = rows[1]
    w = storage.as_strided((2, dims), (stride, 1))
    mean, std, basis = make_space(dims, 3, torch.float32)
    torch.testing.assert_close(pca_project(w, mean, std, basis), reference.pca_project(rows, mean, std, basis))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("rows", [3, 20])
def test_project_gradcheck(rows) -> None:
    mean, std, basis = make_space(12, 4, torch.float64)
    w = torch.randn(rows, 12, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (w, mean, std, basis)]
    torch.autograd.gradcheck(lambda *a: pca_project(*a), inputs)
    torch.autograd.gradgradcheck(lambda a, b, c, d: pca_project(a, b, c, d), inputs)


@pytest.mark.parametrize("rows", [3, 20])
def test_reconstruct_gradcheck(rows) -> None:
    mean, std, basis = make_space(12, 4, torch.float64)
    c = torch.randn(rows, 4, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (c, mean, std, basis)]
    torch.autograd.gradcheck(lambda *a: pca_reconstruct(*a), inputs)
    torch.autograd.gradgradcheck(lambda a, b, s, d: pca_reconstruct(a, b, s, d), inputs)


def test_reconstruct_gradient_to_coefficients_matches_reference_low_precision_basis() -> None:
    mean, std, basis = make_space(64, 5, torch.bfloat16)
    c = torch.randn(1, 5, requires_grad=True)
    target = torch.randn(1, 64)
    loss = ((pca_reconstruct(c, mean, std, basis, out_dtype=torch.float32) - target) ** 2).sum()
    (grad,) = torch.autograd.grad(loss, c)
    c_ref = c.detach().clone().requires_grad_()
    loss_ref = ((reference.pca_reconstruct(c_ref, mean, std, basis, torch.float32) - target) ** 2).sum()
    (grad_ref,) = torch.autograd.grad(loss_ref, c_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)
    # The documented formula: dL/dc = (dL/dw * std) @ V.
    w = reference.pca_reconstruct(c.detach(), mean, std, basis, torch.float32)
    formula = (2 * (w - target) * std.float()) @ basis.float()
    torch.testing.assert_close(grad, formula, rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph() -> None:
    mean, std, basis = make_space(40, 6, torch.float32)

    def edit(w: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        return pca_reconstruct(pca_project(w, mean, std, basis) + direction, mean, std, basis)

    compiled = torch.compile(edit, fullgraph=True)
    w, direction = torch.randn(3, 40), torch.randn(6)
    torch.testing.assert_close(compiled(w, direction), edit(w, direction))


def test_meta_tensors_give_shapes() -> None:
    meta = {"device": "meta"}
    out = pca_project(
        torch.empty(5, 7, **meta),
        torch.empty(7, **meta),
        torch.empty(7, **meta),
        torch.empty(7, 3, dtype=torch.bfloat16, **meta).float(),
    )
    assert out.shape == (5, 3) and out.device.type == "meta"
    out = pca_reconstruct(
        torch.empty(5, 3, **meta), None, torch.empty(7, **meta), torch.empty(7, 3, dtype=torch.bfloat16, **meta)
    )
    assert out.shape == (5, 7) and out.dtype == torch.bfloat16


def test_numpy_in_numpy_out() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 10)).astype(np.float32)
    mean = rng.standard_normal(10).astype(np.float32)
    std = (rng.random(10) + 0.5).astype(np.float32)
    basis = rng.standard_normal((10, 4)).astype(np.float32)
    c = pca_project(w, mean, std, basis)
    assert isinstance(c, np.ndarray)
    np.testing.assert_allclose(c, ((w - mean) / std) @ basis, rtol=1e-5, atol=1e-5)
    back = pca_reconstruct(c, mean, std, basis)
    np.testing.assert_allclose(back, (c @ basis.T) * std + mean, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input


def _good(dims=6, components=3):
    mean, std, basis = make_space(dims, components, torch.float32)
    return torch.randn(2, dims), mean, std, basis


@pytest.mark.parametrize("kernel", PROJECTS)
@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("basis_width", ValueError, r"argument 'basis' must have size 6 in dimension 0 \(D, the width of w\)"),
        ("w_rank", ValueError, r"argument 'w' must have 2 dimensions \[B, D\], got 3"),
        ("std_zero", ValueError, r"argument 'std' must be > 0 everywhere .* got 0.0 at index \(2,\)"),
        ("std_negative", ValueError, r"argument 'std' must be > 0 everywhere .* got -1.0 at index \(0,\)"),
        ("w_nan", ValueError, r"argument 'w' must be finite \(no NaN or Inf\), got nan at index \(1, 3\)"),
        ("basis_inf", ValueError, r"argument 'basis' must be finite"),
        ("mean_nan", ValueError, r"argument 'mean' must be finite"),
        ("mean_size", ValueError, r"argument 'mean' must have size 6 in dimension 0"),
        ("dtype_mix", TypeError, r"argument 'w' must have the dtype of 'basis' or its accumulation dtype"),
        ("int_basis", TypeError, r"argument 'basis' must have dtype in"),
        ("empty_dims", ValueError, r"argument 'basis' must have size >= 1 in dimension 0"),
    ],
)
def test_project_bad_input(kernel, case, error, message) -> None:
    w, mean, std, basis = _good()
    if case == "basis_width":
        basis = torch.randn(5, 3)
    elif case == "w_rank":
        w = torch.randn(2, 3, 6)
    elif case == "std_zero":
        std[2] = 0
    elif case == "std_negative":
        std[0] = -1
    elif case == "w_nan":
        w[1, 3] = float("nan")
    elif case == "basis_inf":
        basis[0, 0] = float("inf")
    elif case == "mean_nan":
        mean[4] = float("nan")
    elif case == "mean_size":
        mean = torch.randn(5)
    elif case == "dtype_mix":
        w, basis = w.half(), basis.bfloat16()
    elif case == "int_basis":
        basis = basis.int()
    elif case == "empty_dims":
        w, mean, std, basis = torch.randn(2, 0), None, torch.ones(0), torch.randn(0, 3)
    with pytest.raises(error, match=r"vision_kernels\.pca_project: " + message):
        kernel(w, mean, std, basis)


@pytest.mark.parametrize("kernel", RECONSTRUCTS)
@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("basis_components", ValueError, r"argument 'basis' must have size 3 in dimension 1 \(K, the number"),
        ("std_zero", ValueError, r"argument 'std' must be > 0 everywhere"),
        ("coeffs_nan", ValueError, r"argument 'coeffs' must be finite"),
        ("std_size", ValueError, r"argument 'std' must have size 6 in dimension 0"),
        ("coeffs_int", TypeError, r"argument 'coeffs' must have dtype in"),
    ],
)
def test_reconstruct_bad_input(kernel, case, error, message) -> None:
    _, mean, std, basis = _good()
    c = torch.randn(2, 3)
    if case == "basis_components":
        basis = torch.randn(6, 4)
    elif case == "std_zero":
        std[1] = 0
    elif case == "coeffs_nan":
        c[0, 0] = float("nan")
    elif case == "std_size":
        std = torch.rand(7) + 1
    elif case == "coeffs_int":
        c = c.long()
    with pytest.raises(error, match=r"vision_kernels\.pca_reconstruct: " + message):
        kernel(c, mean, std, basis)


def test_bad_out_dtype_and_argument_types() -> None:
    _, mean, std, basis = _good()
    with pytest.raises(TypeError, match=r"argument 'out_dtype' must be a floating dtype"):
        pca_reconstruct(torch.randn(2, 3), mean, std, basis, out_dtype=torch.int32)
    with pytest.raises(TypeError, match=r"argument 'w' must be a torch.Tensor, numpy.ndarray or cupy.ndarray"):
        pca_project([[1.0] * 6], mean, std, basis)


def test_mixed_devices() -> None:
    w, mean, std, basis = _good()
    with pytest.raises(ValueError, match=r"arguments 'w' and 'basis' must be on the same device, got cpu and meta"):
        pca_project(w, mean, std, basis.to("meta"))


def test_nan_propagates_when_unchecked() -> None:
    w, mean, std, basis = _good()
    w[0, 0] = float("nan")
    out = pca_project(w, mean, std, basis, check_finite=False)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


def test_native_core_checks_its_own_arguments() -> None:
    from vision_kernels import _native

    native = _native.cpu_module()
    ref = _native.tensor_ref
    w, mean, std, basis = _good()
    out = torch.empty(2, 4)  # wrong K
    with pytest.raises(ValueError, match=r"argument 'out' must have size 3 in dimension 1 \(K\), got shape \[2, 4\]"):
        native.pca_project_fused_cpu(ref(w), ref(mean), ref(std), ref(basis), ref(out))
    with pytest.raises(ValueError, match=r"argument 'x' must have at most 16 rows for the fused kernel"):
        native.pca_project_fused_cpu(ref(torch.randn(17, 6)), ref(mean), ref(std), ref(basis), ref(torch.empty(17, 3)))
    with pytest.raises(TypeError, match=r"argument 'scale' must have dtype in \{float32\}, got float64"):
        native.pca_standardize_cpu(ref(w), ref(mean), ref(std.double()), ref(torch.empty(2, 6)))
    with pytest.raises(TypeError, match=r"argument 'out' must have dtype in \{float64\}, got float32"):
        native.pca_destandardize_cpu(ref(w.double()), ref(std.double()), ref(mean.double()), ref(torch.empty(2, 6)))
