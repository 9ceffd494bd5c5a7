"""cc_conv2d: parity with the unfold reference (CPU kernel and emulated CUDA kernel), gradients, torch.library
contracts, torch.compile, numpy interop, bad input, threads, 64-bit offsets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from vision_kernels import _native
from vision_kernels.ops import cc_conv2d, cc_conv2d_grid
from vision_kernels.reference.cc_conv import cc_conv2d as reference
from vision_kernels.testing import assert_low_precision_parity, emulated, tolerances

OPS = torch.ops.vision_kernels
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (H, W, size, scale, support): upscaling, downscaling, per-axis scales, size-only, both, scale 1, even support.
CASES = [
    (9, 11, None, (1.5, 1.5), (3, 3)),
    (10, 10, None, (0.7, 0.6), (3, 2)),
    (7, 8, (13, 5), None, (4, 3)),
    (6, 7, None, None, (3, 3)),
    (5, 6, None, (2.7, 1.3), (2, 3)),
    (5, 9, (9, 4), (1.7, 0.5), (1, 2)),
]
CASE_IDS = ["up1.5", "down0.7x0.6", "size13x5", "scale1", "up2.7x1.3", "size+scale"]


def make(case: tuple, dtype: torch.dtype = torch.float64, batch: int = 2, channels: int = 3, out_channels: int = 5):
    height, width, size, scale, support = case
    grid = cc_conv2d_grid((height, width), support, size=size, scale=scale)
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    w = torch.randn(*grid.phases, out_channels, channels, *support, dtype=torch.float64) / (channels * 3)
    b = torch.randn(out_channels, dtype=torch.float64)
    return grid, x.to(dtype), w.to(dtype), b.to(dtype)


def cpu_forward(x, w, b, grid, padding_mode="zeros"):
    return cc_conv2d(x, w, b, size=grid.out_size, scale=grid.scale, padding_mode=padding_mode)


def emulated_forward(x, w, b, grid, padding_mode="zeros"):
    return emulated(OPS.cc_conv2d)(x, w, b, list(grid.out_size), list(grid.scale), padding_mode, True)


KERNELS = [
    pytest.param(cpu_forward, id="cpu"),
    pytest.param(emulated_forward, id="cuda_emulated", marks=pytest.mark.emulation),
]


def ref(x, w, b, grid, padding_mode="zeros"):
    return reference(x, w, b, size=grid.out_size, scale=grid.scale, padding_mode=padding_mode)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_parity_float32(kernel, case, padding_mode: str) -> None:
    grid, x, w, b = make(case, torch.float32)
    got = kernel(x, w, b, grid, padding_mode)
    assert got.shape == (2, 5, *grid.out_size) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref(x, w, b, grid, padding_mode), **tolerances(torch.float32))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity_dtypes(kernel, dtype: torch.dtype) -> None:
    grid, x, w, b = make(CASES[0], dtype, channels=6)
    got = kernel(x, w, b, grid)
    assert got.dtype == dtype
    if dtype in (torch.float16, torch.bfloat16):
        exact = ref(x.double(), w.double(), b.double(), grid)
        assert_low_precision_parity(got, ref(x, w, b, grid), exact, what=str(dtype))
    else:
        torch.testing.assert_close(got, ref(x, w, b, grid), **tolerances(dtype))


def test_parity_benchmark_shape_float32() -> None:
    # The benchmark's channel count (full channel blocks, many pixel chunks) at a small batch.
    for scale in (1.5, 0.7, 1.0):
        grid = cc_conv2d_grid((24, 20), 3, scale=scale)
        x = torch.randn(2, 64, 24, 20)
        w = torch.randn(*grid.phases, 64, 64, 3, 3) / 24
        b = torch.randn(64)
        torch.testing.assert_close(cpu_forward(x, w, b, grid), ref(x, w, b, grid), rtol=1e-4, atol=1e-4)


@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    sy=st.floats(0.5, 3.0),
    sx=st.floats(0.5, 3.0),
    support=st.integers(2, 4),
    out_channels=st.integers(1, 10),
    replicate=st.booleans(),
)
def test_parity_property(height, width, sy, sx, support, out_channels, replicate) -> None:
    if int(height * sy + 1e-6) < 1 or int(width * sx + 1e-6) < 1:
        return
    case = (height, width, None, (sy, sx), (support, support))
    grid, x, w, b = make(case, torch.float64, batch=1, channels=2, out_channels=out_channels)
    mode = "replicate" if replicate else "zeros"
    torch.testing.assert_close(cpu_forward(x, w, b, grid, mode), ref(x, w, b, grid, mode), **tolerances(torch.float64))


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_inputs_and_no_bias(kernel) -> None:
    grid, x, w, b = make(CASES[0], torch.float32)
    wide = torch.randn(2, 3, 20, 30)
    x = wide[:, :, ::2, 3:25:2]  # [2, 3, 10, 11]: both spatial strides > 1
    grid = cc_conv2d_grid((10, 11), 3, scale=1.5)
    w_strided = torch.randn(3, 5, *grid.phases, 3, 3).permute(2, 3, 1, 0, 4, 5)  # non-contiguous weight
    assert not x.is_contiguous() and not w_strided.is_contiguous()
    torch.testing.assert_close(kernel(x, w_strided, None, grid), ref(x, w_strided, None, grid), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_batch_and_channels(kernel) -> None:
    grid, x, w, b = make(CASES[0], torch.float32, batch=0)
    assert kernel(x, w, b, grid).shape == (0, 5, *grid.out_size)
    grid, x, w, b = make(CASES[0], torch.float32, out_channels=0)
    assert kernel(x, w, b, grid).shape == (2, 0, *grid.out_size)


@pytest.mark.parametrize("emulate", [False, pytest.param(True, marks=pytest.mark.emulation)])
def test_gradients_of_an_empty_batch(emulate: bool) -> None:
    grid, x, w, b = make(CASES[0], torch.float32, batch=0)
    grad = torch.randn(0, 5, *grid.out_size)
    grad_input, grad_weight = OPS.cc_conv2d_grad_input, OPS.cc_conv2d_grad_weight
    if emulate:
        grad_input, grad_weight = emulated(grad_input), emulated(grad_weight)
    assert grad_input(grad, w, [9, 11], list(grid.scale), "zeros").shape == x.shape
    assert torch.equal(grad_weight(grad, x, [3, 3], list(grid.scale), "zeros"), torch.zeros_like(w))


def test_generic_micro_kernel_matches() -> None:
    # The portable micro-kernels (used on CPUs without AVX-512) against the reference.
    module = _native.cpu_module()
    grid, x, w, b = make(CASES[0], torch.float32, channels=9, out_channels=11)
    try:
        module.cc_conv_set_micro_kernel_isa("generic")
        assert module.cc_conv_micro_kernel_isa() == "generic"
        x.requires_grad_()
        w.requires_grad_()
        out = cpu_forward(x, w, b, grid)
        gx, gw = torch.autograd.grad(out, (x, w), torch.ones_like(out))
    finally:
        module.cc_conv_set_micro_kernel_isa("auto")
    rx, rw = torch.autograd.grad(ref(x, w, b, grid), (x, w), torch.ones_like(out))
    torch.testing.assert_close(out, ref(x, w, b, grid), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, rx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_reference(case, padding_mode: str) -> None:
    grid, x, w, b = make(case)
    for t in (x, w, b):
        t.requires_grad_()
    weights = torch.randn(2, 5, *grid.out_size, dtype=torch.float64)
    ours = torch.autograd.grad((cpu_forward(x, w, b, grid, padding_mode) * weights).sum(), (x, w, b))
    theirs = torch.autograd.grad((ref(x, w, b, grid, padding_mode) * weights).sum(), (x, w, b))
    for name, a, e in zip(("input", "weight", "bias"), ours, theirs, strict=True):
        torch.testing.assert_close(a, e, **tolerances(torch.float64), msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize(
    "case",
    [(6, 5, None, (1.5, 0.75), (3, 3)), (5, 6, (7, 4), None, (2, 3))],
    ids=["scale1.5x0.75", "size7x4"],
)
def test_gradcheck_float64(case) -> None:
    # Few phases and channels: gradcheck perturbs every element of input, weight and bias.
    grid, x, w, b = make(case, batch=1, channels=1, out_channels=2)
    inputs = tuple(t.requires_grad_() for t in (x, w, b))
    torch.autograd.gradcheck(lambda a, c, d: cpu_forward(a, c, d, grid, "replicate"), inputs)
    torch.autograd.gradcheck(lambda a, c, d: cpu_forward(a, c, d, grid, "zeros"), inputs)


@pytest.mark.emulation
@pytest.mark.parametrize("case", [CASES[0], CASES[1]], ids=CASE_IDS[:2])
def test_emulated_gradient_kernels(case) -> None:
    grid, x, w, b = make(case, torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    out = ref(x, w, b, grid, "replicate")
    grad = torch.randn_like(out)
    want_x, want_w = torch.autograd.grad(out, (x, w), grad)
    in_size, support = [x.shape[2], x.shape[3]], [w.shape[4], w.shape[5]]
    got_x = emulated(OPS.cc_conv2d_grad_input)(grad, w.detach(), in_size, list(grid.scale), "replicate")
    got_w = emulated(OPS.cc_conv2d_grad_weight)(grad, x.detach(), support, list(grid.scale), "replicate")
    torch.testing.assert_close(got_x, want_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients(dtype: torch.dtype) -> None:
    grid, x, w, b = make(CASES[1], dtype)
    grad = torch.randn(2, 5, *grid.out_size, dtype=torch.float64)
    ops_scale = list(grid.scale)
    got_x = OPS.cc_conv2d_grad_input(grad.to(dtype), w, [10, 10], ops_scale, "zeros")
    got_w = OPS.cc_conv2d_grad_weight(grad.to(dtype), x, [3, 2], ops_scale, "zeros")

    def reference_grads(t: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        xr, wr = x.to(t).requires_grad_(), w.to(t).requires_grad_()
        return torch.autograd.grad(ref(xr, wr, None, grid), (xr, wr), grad.to(t))

    exact, low = reference_grads(torch.float64), reference_grads(dtype)
    assert_low_precision_parity(got_x, low[0], exact[0], what=f"{dtype} grad input")
    assert_low_precision_parity(got_w, low[1], exact[1], what=f"{dtype} grad weight")


def test_64bit_offsets_with_strided_view() -> None:
    # Images 2^31 + 7 elements apart: offsets exceed int32; untouched pages of torch.empty stay unallocated.
    stride = 2**31 + 7
    storage = torch.empty(stride + 16)
    images = torch.randn(2, 1, 4, 4)
    storage[:16] = images[0].flatten()
    storage[stride : stride + 16] = images[1].flatten()
    x = storage.as_strided((2, 1, 4, 4), (stride, 16, 4, 1))
    grid = cc_conv2d_grid((4, 4), 3, scale=1.5)
    w = torch.randn(*grid.phases, 2, 1, 3, 3)
    torch.testing.assert_close(cpu_forward(x, w, None, grid), ref(images, w, None, grid), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- torch.library, compile, interop


def test_torch_compile_fullgraph() -> None:
    grid, x, w, b = make(CASES[1], torch.float32)

    def layer(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.relu(cc_conv2d(x, w, b, scale=(0.7, 0.6)) * 2)

    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x, w, b), layer(x, w, b))


def test_meta_tensors_give_shapes() -> None:
    grid = cc_conv2d_grid((64, 64), 3, scale=1.5)
    out = cc_conv2d(
        torch.empty(8, 4, 64, 64, device="meta"), torch.empty(*grid.phases, 6, 4, 3, 3, device="meta"), scale=1.5
    )
    assert out.shape == (8, 6, 96, 96) and out.device.type == "meta"


def test_numpy_in_numpy_out() -> None:
    grid, x, w, b = make(CASES[0], torch.float32)
    out = cc_conv2d(x.numpy(), w.numpy(), b.numpy(), scale=1.5)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref(x, w, b, grid).numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- bad input

F_NAME = r"vision_kernels\.cc_conv2d: "


def bad_cases() -> list:
    grid = cc_conv2d_grid((10, 10), 3, scale=1.5)
    x, w, b = torch.randn(1, 3, 10, 10), torch.randn(*grid.phases, 4, 3, 3, 3), torch.randn(4)
    return [
        ((x, w, b), {"scale": 0.0}, ValueError, r"argument 'scale' must be finite and > 0, got 0.0"),
        ((x, w, b), {"scale": -1.5}, ValueError, r"argument 'scale' must be finite and > 0, got -1.5"),
        ((x, w, b), {"size": (15, 0)}, ValueError, r"argument 'size' must be >= 1, got 0 for the width"),
        ((x, w, b), {"scale": 0.01}, ValueError, r"argument 'scale' gives an empty output"),
        (
            (x, torch.randn(1, 1, 4, 3, 1, 1), b),
            {"scale": 0.5},
            ValueError,
            r"argument 'weight' is too small for the scale: support 1 x scale 0.5 < 1 for the height",
        ),
        (
            (x, torch.randn(*grid.phases, 4, 2, 3, 3), b),
            {"scale": 1.5},
            ValueError,
            r"argument 'weight' must have size 3 in dimension 3 \(C, the channels of input\), "
            r"got shape \[3, 3, 4, 2, 3, 3\]",
        ),
        (
            (x, torch.randn(2, 3, 4, 3, 3, 3), b),
            {"scale": 1.5},
            ValueError,
            r"argument 'weight' must have 3 x 3 phases in dimensions 0 and 1 for the grid 10 x 10 -> 15 x 15",
        ),
        ((x, w, torch.randn(5)), {"scale": 1.5}, ValueError, r"argument 'bias' must have size 4 in dimension 0"),
        ((x, w, b.double()), {"scale": 1.5}, TypeError, r"argument 'bias' must have the dtype of 'input'"),
        ((x.int(), w.int(), b), {"scale": 1.5}, TypeError, r"argument 'input' must have dtype in"),
        ((x[0], w, b), {"scale": 1.5}, ValueError, r"argument 'input' must have 4 dimensions \[B, C, H, W\], got 3"),
        ((x, w[0], b), {"scale": 1.5}, ValueError, r"argument 'weight' must have 6 dimensions"),
        (
            (torch.randn(1, 3, 0, 10), w, b),
            {"scale": 1.5},
            ValueError,
            r"argument 'input' must have size >= 1 in dimension 2 \(H\), got shape \[1, 3, 0, 10\]",
        ),
        (
            (x, w, b),
            {"scale": 1.5, "padding_mode": "reflect"},
            ValueError,
            r"argument 'padding_mode' must be one of 'zeros', 'replicate', got 'reflect'",
        ),
        (
            (x.index_fill(2, torch.tensor([3]), float("nan")), w, b),
            {"scale": 1.5},
            ValueError,
            r"argument 'input' must be finite \(no NaN or Inf\), got nan at index \(0, 0, 3, 0\)",
        ),
        (
            (x, w.index_fill(0, torch.tensor([1]), float("inf")), b),
            {"scale": 1.5},
            ValueError,
            r"argument 'weight' must be finite",
        ),
    ]


@pytest.mark.parametrize(("args", "kwargs", "error", "message"), bad_cases())
def test_bad_input(args, kwargs, error, message) -> None:
    with pytest.raises(error, match=F_NAME + message):
        cc_conv2d(*args, **kwargs)


@pytest.mark.emulation
def test_bad_input_emulated() -> None:
    grid = cc_conv2d_grid((10, 10), 3, scale=1.5)
    x, b = torch.randn(1, 3, 10, 10), torch.randn(4)
    with pytest.raises(ValueError, match=F_NAME + r"argument 'weight' must have size 3 in dimension 3"):
        emulated(OPS.cc_conv2d)(x, torch.randn(*grid.phases, 4, 2, 3, 3), b, [15, 15], [1.5, 1.5], "zeros", True)
    with pytest.raises(ValueError, match=F_NAME + r"argument 'input' must be finite"):
        emulated(OPS.cc_conv2d)(
            x / 0 * 0, torch.randn(*grid.phases, 4, 3, 3, 3), b, [15, 15], [1.5, 1.5], "zeros", True
        )


def test_bad_input_to_the_gradient_ops() -> None:
    grid = cc_conv2d_grid((10, 10), 3, scale=1.5)
    grad, w, x = torch.randn(2, 4, 15, 15), torch.randn(*grid.phases, 4, 3, 3, 3), torch.randn(2, 3, 10, 10)
    with pytest.raises(ValueError, match=r"vision_kernels\.cc_conv2d_grad_input: argument 'weight' must have 3 phases"):
        OPS.cc_conv2d_grad_input(grad, w[:2], [10, 10], [1.5, 1.5], "zeros")
    with pytest.raises(
        ValueError, match=r"vision_kernels\.cc_conv2d_grad_input: argument 'weight' must have size 3 in dimension 2 \(O"
    ):
        OPS.cc_conv2d_grad_input(grad[:, :3], w, [10, 10], [1.5, 1.5], "zeros")
    with pytest.raises(ValueError, match=r"vision_kernels\.cc_conv2d_grad_weight: argument 'grad' must have size 2 in"):
        OPS.cc_conv2d_grad_weight(grad[:1], x, [3, 3], [1.5, 1.5], "zeros")
    with pytest.raises(TypeError, match=r"vision_kernels\.cc_conv2d_grad_weight: argument 'input' must have the dtype"):
        OPS.cc_conv2d_grad_weight(grad, x.double(), [3, 3], [1.5, 1.5], "zeros")
    with pytest.raises(ValueError, match=r"cc_conv2d_grad_weight: argument 'weight' is too small for the scale"):
        OPS.cc_conv2d_grad_weight(torch.randn(2, 4, 2, 2), x, [1, 1], [0.2, 0.2], "zeros")


def test_nan_propagates_when_unchecked() -> None:
    grid, x, w, b = make(CASES[3], torch.float32)
    x[0, 0, 0, 0] = float("nan")
    out = cc_conv2d(x, w, b, check_finite=False)
    assert torch.isnan(out[0, :, :2, :2]).all() and not torch.isnan(out[1]).any()


def test_mixed_devices() -> None:
    grid, x, w, b = make(CASES[0], torch.float32)
    with pytest.raises(
        ValueError, match=F_NAME + r"arguments 'input' and 'weight' must be on the same device, got cpu and meta"
    ):
        cc_conv2d(x, w.to("meta"), b, scale=1.5)


def test_bad_argument_types() -> None:
    with pytest.raises(
        TypeError, match=F_NAME + r"argument 'input' must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got list"
    ):
        cc_conv2d([[1.0]], torch.ones(1), scale=1.5)  # type: ignore[arg-type]


def test_native_core_checks_its_own_arguments() -> None:
    # Direct calls into the core with inconsistent plans raise instead of reading out of bounds.
    from vision_kernels.ops.cc_conv_grid import forward_plan

    ref_ = _native.tensor_ref
    module = _native.cpu_module()
    x, w, out = torch.randn(1, 2, 5, 5), torch.randn(1, 1, 3, 2, 3, 3), torch.empty(1, 3, 5, 5)
    plan = forward_plan(5, 5, 1.0, 3, "zeros")
    none, pairs = torch.empty(0), torch.empty(0, dtype=torch.int64)
    good = [ref_(t) for t in (plan.taps, plan.group, plan.order, plan.offsets)]
    module.cc_conv_gather_gemm_cpu(ref_(x), ref_(w), ref_(none), ref_(pairs), ref_(pairs), *good, *good, ref_(out))
    torch.testing.assert_close(out, F.conv2d(x, w[0, 0], padding=1), rtol=1e-5, atol=1e-5)
    bad_taps = plan.taps.clone()
    bad_taps[2, 1] = 5
    bad = [ref_(t) for t in (bad_taps, plan.group, plan.order, plan.offsets)]
    with pytest.raises(
        ValueError, match=F_NAME + r"argument 'rows' plan is inconsistent: taps\[2, 1\] = 5 is outside \[-1, 5\)"
    ):
        module.cc_conv_gather_gemm_cpu(ref_(x), ref_(w), ref_(none), ref_(pairs), ref_(pairs), *bad, *good, ref_(out))
    bad_order = plan.order.clone()
    bad_order[0] = 7
    bad = [ref_(t) for t in (plan.taps, plan.group, bad_order, plan.offsets)]
    with pytest.raises(ValueError, match=r"argument 'cols' plan is inconsistent: order\[0\] = 7"):
        module.cc_conv_gather_gemm_cpu(ref_(x), ref_(w), ref_(none), ref_(pairs), ref_(pairs), *good, *bad, ref_(out))
    with pytest.raises(ValueError, match=r"argument 'out' must have size 3 in dimension 1"):
        module.cc_conv_gather_gemm_cpu(
            ref_(x), ref_(w), ref_(none), ref_(pairs), ref_(pairs), *good, *good, ref_(torch.empty(1, 2, 5, 5))
        )
    # Transposed (input-gradient) mode: the weight is read as [Py, Px, C, O, Kh, Kw] through (phase, tap) pairs.
    bad_pairs = torch.tensor([[[0, 0], [4, 1], [-1, -1]]])
    with pytest.raises(
        ValueError, match=r"argument 'row_pairs' entry \[0, 1\] = \(4, 1\) is outside \[0, 1\) x \[0, 3\)"
    ):
        module.cc_conv_gather_gemm_cpu(
            ref_(x), ref_(w.transpose(2, 3)), ref_(none), ref_(bad_pairs), ref_(bad_pairs), *good, *good, ref_(out)
        )
