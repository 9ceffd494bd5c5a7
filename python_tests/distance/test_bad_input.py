"""sq_l2_distance refuses bad input with one clear message (issue 16 items 1, 2, 4, 9), on the CPU kernel and
the emulated CUDA kernel: every tensor argument on another device, wrong dtypes and ranks, NaN/Inf, empty
inputs; and accepts numpy arrays and any DLPack producer (``accepts_arrays``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vision_kernels.ops import sq_l2_distance
from vision_kernels.testing import DLPackProducer, each_tensor_moved, emulated

OP = torch.ops.vision_kernels.sq_l2_distance
NAME = r"vision_kernels\.sq_l2_distance: "


def cpu_kernel(x, y, check_finite=True):
    return sq_l2_distance(x, y, check_finite=check_finite)


def cuda_emulated(x, y, check_finite=True):
    return emulated(OP)(x, y, check_finite)


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def arguments() -> dict[str, torch.Tensor]:
    return {"x": torch.randn(4, 3), "y": torch.randn(5, 3)}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("moved", ["x", "y"])
def test_every_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    case = dict(each_tensor_moved(arguments()))[moved]
    with pytest.raises(ValueError, match=NAME + r"arguments '(x|y)' and '(x|y)' must be on the same device, got"):
        kernel(**case)


@pytest.mark.emulation
def test_emulated_kernel_refuses_non_cpu_tensors() -> None:
    meta = {name: t.to("meta") for name, t in arguments().items()}
    with pytest.raises(ValueError, match=NAME + r"argument 'x' must be on a cpu device for this kernel, got meta"):
        cuda_emulated(**meta)


def test_all_meta_gives_shapes() -> None:
    out = sq_l2_distance(torch.empty(4, 3, device="meta"), torch.empty(5, 3, device="meta"))
    assert out.shape == (4, 5) and out.device.type == "meta"


BAD = [
    (lambda: (torch.randn(4, 3).long(), torch.randn(5, 3).long()), TypeError, r"argument 'x' must have dtype in"),
    (lambda: (torch.randn(4, 3), torch.randn(5, 3).double()), TypeError, r"argument 'y' must have the dtype of 'x'"),
    (lambda: (torch.randn(4), torch.randn(5, 3)), ValueError, r"argument 'x' must have 2 dimensions \[N, D\], got 1"),
    (lambda: (torch.randn(4, 3), torch.randn(5, 2)), ValueError, r"argument 'y' must have size 3 in dimension 1"),
    (lambda: (torch.randn(4, 0), torch.randn(5, 0)), ValueError, r"argument 'x' must have size >= 1 in dimension 1"),
    (
        lambda: (torch.tensor([[0.0, float("nan")]]), torch.randn(5, 2)),
        ValueError,
        r"argument 'x' must be finite \(no NaN or Inf\), got nan at index \(0, 1\)",
    ),
    (
        lambda: (torch.randn(4, 2), torch.tensor([[float("-inf"), 0.0]])),
        ValueError,
        r"argument 'y' must be finite \(no NaN or Inf\), got -inf at index \(0, 0\)",
    ),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("make", "error", "message"), BAD)
def test_bad_input(kernel, make, error, message) -> None:
    with pytest.raises(error, match=NAME + message):
        kernel(*make())


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_sets_and_opt_out_of_the_finite_check(kernel) -> None:
    assert kernel(torch.randn(0, 3), torch.randn(5, 3)).shape == (0, 5)
    assert kernel(torch.randn(4, 3), torch.randn(0, 3)).shape == (4, 0)
    x = torch.tensor([[float("nan"), 0.0]])
    out = kernel(x, torch.zeros(2, 2), check_finite=False)
    assert bool(out.isnan().all())


def test_non_arrays_are_type_errors() -> None:
    with pytest.raises(TypeError, match=NAME + r"argument 'y' must be a torch.Tensor, numpy.ndarray or cupy.ndarray"):
        sq_l2_distance(torch.randn(2, 2), [[1.0, 2.0]])
    with pytest.raises(TypeError, match=NAME + r"argument 'x' .*got float"):
        sq_l2_distance(1.5, torch.randn(2, 2))


def test_numpy_in_numpy_out() -> None:
    x, y = np.random.rand(4, 3).astype(np.float32), np.random.rand(5, 3).astype(np.float32)
    out = sq_l2_distance(x, y)
    assert isinstance(out, np.ndarray) and out.shape == (4, 5)
    np.testing.assert_allclose(out, ((x[:, None] - y[None]) ** 2).sum(-1), rtol=1e-5)


def test_any_dlpack_producer_in_torch_out() -> None:
    """Objects exposing only ``__dlpack__``/``__dlpack_device__`` (as JAX arrays do) go through torch.from_dlpack."""
    x, y = np.random.rand(4, 3), np.random.rand(5, 3)
    out = sq_l2_distance(DLPackProducer(x), DLPackProducer(y))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    torch.testing.assert_close(out, sq_l2_distance(torch.from_numpy(x), torch.from_numpy(y)))
    mixed = sq_l2_distance(x, DLPackProducer(y))  # the first array decides: numpy in, numpy out
    assert isinstance(mixed, np.ndarray)
    np.testing.assert_allclose(mixed, out.numpy())


def test_a_broken_dlpack_producer_is_a_type_error_naming_the_argument() -> None:
    class Broken:
        def __dlpack__(self, **kwargs):
            raise BufferError("cannot export")

        def __dlpack_device__(self):
            return (1, 0)

    with pytest.raises(TypeError, match=NAME + r"argument 'y' implements __dlpack__ but torch.from_dlpack cannot"):
        sq_l2_distance(torch.randn(2, 2), Broken())
