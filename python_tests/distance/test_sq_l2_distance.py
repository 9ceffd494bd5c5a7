"""sq_l2_distance: parity with the reference (CPU kernel and emulated CUDA kernel), gradients,
torch.library contracts, torch.compile, numpy interop, bad input, threads, 64-bit offsets."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vision_kernels.ops import sq_l2_distance
from vision_kernels.reference.distance import sq_l2_distance as reference
from vision_kernels.testing import assert_low_precision_parity, emulated, tolerances

OP = torch.ops.vision_kernels.sq_l2_distance
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def cuda_emulated(x: torch.Tensor, y: torch.Tensor, check_finite: bool = True) -> torch.Tensor:
    return emulated(OP)(x, y, check_finite)


def cpu_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return sq_l2_distance(x, y)


# Every parity and bad-input test runs on both kernels: the CPU one, and the CUDA one executed
# by the host emulation harness.
KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def assert_parity(kernel, x: torch.Tensor, y: torch.Tensor) -> None:
    got = kernel(x, y)
    assert got.dtype == x.dtype and got.shape == (x.shape[0], y.shape[0])
    if x.dtype in (torch.float16, torch.bfloat16):
        exact = reference(x.double(), y.double())
        assert_low_precision_parity(got, reference(x, y), exact, what=f"{x.dtype} {tuple(x.shape)}x{tuple(y.shape)}")
    else:
        torch.testing.assert_close(got, reference(x, y), **tolerances(x.dtype))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 2), (70, 90, 37), (129, 65, 147), (4, 300, 3)])
def test_parity(kernel, dtype: torch.dtype, shape: tuple[int, int, int]) -> None:
    n, m, d = shape
    x = torch.randn(n, d).to(dtype)
    y = torch.randn(m, d).to(dtype)
    assert_parity(kernel, x, y)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_and_broadcast_inputs(kernel) -> None:
    base = torch.randn(40, 60)
    x = base[::2, 5:50:3]  # [20, 15], both strides > 1
    y = torch.randn(15, 33).t()  # [33, 15], column-major
    assert not x.is_contiguous() and not y.is_contiguous()
    assert_parity(kernel, x, y)
    row = torch.randn(1, 15).expand(7, 15)  # stride 0 rows
    assert_parity(kernel, row, y)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_sets(kernel) -> None:
    x = torch.randn(0, 8)
    y = torch.randn(5, 8)
    assert kernel(x, y).shape == (0, 5)
    assert kernel(y, x).shape == (5, 0)


@given(
    n=st.integers(0, 70),
    m=st.integers(0, 70),
    d=st.integers(1, 40),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    transpose_y=st.booleans(),
)
def test_parity_property(n: int, m: int, d: int, dtype: torch.dtype, transpose_y: bool) -> None:
    x = torch.randn(n, d, dtype=dtype)
    y = torch.randn(d, m, dtype=dtype).t() if transpose_y else torch.randn(m, d, dtype=dtype)
    assert_parity(cpu_kernel, x, y)


def test_identical_rows_give_exact_zero() -> None:
    x = torch.randn(10, 33)
    assert torch.all(sq_l2_distance(x, x).diagonal() == 0)


def test_large_values_have_no_cancellation() -> None:
    # |x|^2 + |y|^2 - 2 x.y loses everything here; the difference form keeps it exactly.
    x = torch.full((1, 4), 1e4) + torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    y = torch.full((1, 4), 1e4)
    assert sq_l2_distance(x, y).item() == 1.0


def test_64bit_offsets_with_strided_view() -> None:
    # Rows 2^31 + 5 elements apart: element offsets exceed int32, memory stays small because
    # torch.empty leaves untouched pages unallocated.
    d = 6
    stride = 2**31 + 5
    storage = torch.empty(stride + d)
    rows = torch.randn(2, d)
    storage[:d] = rows[0]
    storage[stride : stride + d] = rows[1]
    x = storage.as_strided((2, d), (stride, 1))
    y = torch.randn(3, d)
    torch.testing.assert_close(sq_l2_distance(x, y), reference(rows, y))
    torch.testing.assert_close(sq_l2_distance(y, x), reference(y, rows))


def test_gradients_match_reference() -> None:
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: sq_l2_distance(a, b), (x, y))
    torch.autograd.gradgradcheck(lambda a, b: sq_l2_distance(a, b), (x, y))
    weights = torch.randn(6, 4, dtype=torch.float64)
    (sq_l2_distance(x, y) * weights).sum().backward()
    gx, gy = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    (reference(x, y) * weights).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gy, y.grad)


def test_torch_compile_fullgraph() -> None:
    def nearest(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sq_l2_distance(x, y).min(dim=1).values.sqrt()

    compiled = torch.compile(nearest, fullgraph=True)
    x, y = torch.randn(20, 8), torch.randn(30, 8)
    torch.testing.assert_close(compiled(x, y), nearest(x, y))


def test_meta_tensors_give_shapes() -> None:
    out = sq_l2_distance(torch.empty(4, 3, device="meta"), torch.empty(9, 3, device="meta"))
    assert out.shape == (4, 9) and out.device.type == "meta"


def test_numpy_in_numpy_out() -> None:
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    out = sq_l2_distance(x, y)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ((x[:, None] - y[None]) ** 2).sum(-1), rtol=1e-5)
    x.flags.writeable = False
    np.testing.assert_allclose(sq_l2_distance(x, y[::-1]), ((x[:, None] - y[::-1][None]) ** 2).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("x", "y", "error", "message"),
    [
        (torch.randn(3), torch.randn(3, 3), ValueError, r"argument 'x' must have 2 dimensions \[N, D\], got 1"),
        (torch.randn(3, 4), torch.randn(2, 5), ValueError, r"argument 'y' must have size 4 in dimension 1"),
        (torch.randn(3, 0), torch.randn(2, 0), ValueError, r"argument 'x' must have size >= 1 in dimension 1"),
        (torch.randn(3, 4).int(), torch.randn(2, 4).int(), TypeError, r"argument 'x' must have dtype in"),
        (torch.randn(3, 4), torch.randn(2, 4).double(), TypeError, r"argument 'y' must have the dtype of 'x'"),
        (
            torch.tensor([[1.0, float("nan")]]),
            torch.randn(2, 2),
            ValueError,
            r"argument 'x' must be finite \(no NaN or Inf\), got nan at index \(0, 1\)",
        ),
        (torch.randn(2, 2), torch.tensor([[float("inf"), 1.0]]), ValueError, r"argument 'y' must be finite"),
    ],
)
def test_bad_input(kernel, x, y, error, message) -> None:
    with pytest.raises(error, match=r"vision_kernels\.sq_l2_distance: " + message):
        kernel(x, y)


def test_nan_propagates_when_unchecked() -> None:
    x = torch.tensor([[1.0, float("nan")], [0.0, 0.0]])
    out = sq_l2_distance(x, torch.zeros(1, 2), check_finite=False)
    assert torch.isnan(out[0, 0]) and out[1, 0] == 0


def test_bad_argument_types() -> None:
    with pytest.raises(
        TypeError, match=r"argument 'x' must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got list"
    ):
        sq_l2_distance([[1.0]], np.ones((1, 1)))
    with pytest.raises(
        TypeError, match=r"argument 'y' must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got list"
    ):
        sq_l2_distance(torch.ones(1, 1), [[1.0]])


def test_mixed_devices() -> None:
    with pytest.raises(ValueError, match=r"arguments 'x' and 'y' must be on the same device, got cpu and meta"):
        sq_l2_distance(torch.randn(2, 3), torch.empty(2, 3, device="meta"))


def test_native_core_checks_its_own_arguments() -> None:
    # A direct call into the core with inconsistent shapes raises instead of reading out of bounds.
    from vision_kernels import _native

    x, y, out = torch.randn(3, 4), torch.randn(2, 4), torch.empty(3, 3)
    with pytest.raises(ValueError, match=r"argument 'out' must have size 2 in dimension 1 \(M\), got shape \[3, 3\]"):
        _native.cpu_module().sq_l2_distance_cpu(_native.tensor_ref(x), _native.tensor_ref(y), _native.tensor_ref(out))


def test_gil_is_released_during_the_kernel() -> None:
    x, y = torch.randn(3000, 128), torch.randn(3000, 128)
    started, finished = threading.Event(), threading.Event()

    def work() -> None:
        started.set()
        for _ in range(3):
            sq_l2_distance(x, y, check_finite=False)
        finished.set()

    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    spins = 0
    while not finished.is_set():
        spins += 1
    thread.join()
    # With the GIL held for the whole kernel this loop could only run between calls.
    assert spins > 1000
