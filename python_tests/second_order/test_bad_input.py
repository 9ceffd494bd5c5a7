"""second_order_effects refuses bad input with one clear message (issue 16 items 1, 2, 4, 9), on the CPU kernel
and the emulated CUDA kernel: every tensor argument (the optional offset included) on another device,
float/bool layer indices, out-of-range layers, ln_std <= 0, NaN/Inf, wrong dtypes and shapes; zero images give
an empty result; numpy and DLPack inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vision_kernels.ops import second_order_effects
from vision_kernels.testing import DLPackProducer, each_tensor_moved, emulated

OP = torch.ops.vision_kernels.second_order_effects
NAME = r"vision_kernels\.second_order_effects: "
TENSORS = ["attn", "ln_std", "activations", "directions", "scale", "offset"]


def cpu_kernel(attn, ln_std, activations, directions, scale, offset=None, layers=None, out_dtype=None,
               check_finite=True):  # fmt: skip
    return second_order_effects(attn, ln_std, activations, directions, scale, offset, layers, out_dtype=out_dtype,
                                check_finite=check_finite)  # fmt: skip


def cuda_emulated(attn, ln_std, activations, directions, scale, offset=None, layers=None, out_dtype=None,
                  check_finite=True):  # fmt: skip
    layer_list = list(range(attn.shape[1])) if layers is None else list(layers)
    return emulated(OP)(attn, ln_std, activations, directions, scale, offset, layer_list, out_dtype, check_finite)


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def arguments(b: int = 2, nl: int = 3, h: int = 2, n: int = 5, nn: int = 4, e: int = 6) -> dict[str, object]:
    """All L layers listed (S = L); pass ``layers`` and matching ``directions`` to change that."""
    return {
        "attn": torch.softmax(torch.randn(b, nl, h, n), -1),
        "ln_std": torch.rand(b, nl, n) + 0.5,
        "activations": torch.randn(b, n, nn),
        "directions": torch.randn(nl, h, nn, e),
        "scale": torch.rand(b) + 0.5,
        "offset": torch.randn(b, e),
    }


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("moved", TENSORS)
def test_every_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    case = dict(each_tensor_moved(arguments()))[moved]
    other = "ln_std" if moved == "attn" else moved
    with pytest.raises(ValueError, match=NAME + rf"arguments 'attn' and '{other}' must be on the same device"):
        kernel(**case)


def test_all_meta_gives_shapes() -> None:
    meta = {name: t.to("meta") for name, t in arguments().items()}  # type: ignore[union-attr]
    assert second_order_effects(**meta).shape == (2, 4, 6)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([0, 1, 1.7], r"argument 'layers' must hold ints, got float 1.7 at position 2"),
        ([0, True, 2], r"argument 'layers' must hold ints, got bool True at position 1"),
        (3, r"argument 'layers' must be a sequence of ints, got int 3"),
    ],
)
def test_layers_must_be_ints(layers, message) -> None:
    with pytest.raises(TypeError, match=NAME + message):
        cpu_kernel(**arguments(), layers=layers)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"layers": [0, 1, 3]}, IndexError, r"argument 'layers' must hold layer indices in \[0, 3\), got 3 at"),
        ({"layers": [0, 1]}, ValueError, r"argument 'directions' must have size 2 in dimension 0 \(S, the number"),
        ({"ln_std": torch.zeros(2, 3, 5)}, ValueError, r"argument 'ln_std' must be > 0 .*got 0.0 at \(0, 0, 0\)"),
        ({"ln_std": torch.full((2, 3, 5), math.nan)}, ValueError, r"argument 'ln_std' must be finite"),
        ({"attn": torch.full((2, 3, 2, 5), math.inf)}, ValueError, r"argument 'attn' must be finite"),
        ({"activations": torch.full((2, 5, 4), math.nan)}, ValueError, r"argument 'activations' must be finite"),
        ({"directions": torch.full((3, 2, 4, 6), math.nan)}, ValueError, r"argument 'directions' must be finite"),
        ({"scale": torch.tensor([math.inf, 1.0])}, ValueError, r"argument 'scale' must be finite"),
        ({"offset": torch.full((2, 6), math.nan)}, ValueError, r"argument 'offset' must be finite"),
        ({"ln_std": torch.rand(2, 3, 5).double()}, TypeError, r"argument 'ln_std' must have the dtype of 'attn'"),
        ({"attn": torch.ones(2, 3, 2, 5, dtype=torch.long)}, TypeError, r"argument 'attn' must have dtype in"),
        ({"activations": torch.randn(2, 4, 4)}, ValueError, r"argument 'activations' must have size 5 in dimension 1"),
        ({"out_dtype": torch.bool}, TypeError, r"argument 'out_dtype' must be one of"),
    ],
)
def test_bad_input(kernel, change, error, message) -> None:
    with pytest.raises(error, match=NAME + message):
        kernel(**{**arguments(), **change})


def test_out_dtype_must_be_a_dtype() -> None:
    with pytest.raises(TypeError, match=NAME + r"argument 'out_dtype' must be a torch.dtype or None, got str"):
        cpu_kernel(**arguments(), out_dtype="float32")


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_images_and_the_finite_opt_out(kernel) -> None:
    assert kernel(**arguments(b=0)).shape == (0, 4, 6)
    out = kernel(**{**arguments(), "scale": torch.tensor([1.0, math.nan])}, check_finite=False)
    assert bool(out[1].isnan().all()) and not bool(out[0].isnan().any())


def test_numpy_and_dlpack_inputs() -> None:
    inputs = {name: t.numpy() for name, t in arguments().items()}  # type: ignore[union-attr]
    out = second_order_effects(**inputs)
    assert isinstance(out, np.ndarray) and out.shape == (2, 4, 6)
    foreign = second_order_effects(**{name: DLPackProducer(a) for name, a in inputs.items()})
    assert isinstance(foreign, torch.Tensor)
    np.testing.assert_allclose(foreign.numpy(), out, rtol=1e-6)
