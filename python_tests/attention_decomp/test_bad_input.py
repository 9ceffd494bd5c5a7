"""attention_decomposition refuses bad input with one clear message (issue 16 items 1, 2, 4, 9), on the CPU
kernel and the emulated CUDA kernel: every tensor argument (the optional offset included) on another device,
float/bool layer indices (``[1.7]`` used to act as ``[1]``), out-of-range layers, wrong dtypes and shapes,
NaN/Inf; zero images give an empty result; numpy and DLPack inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vision_kernels.ops import attention_decomposition
from vision_kernels.testing import DLPackProducer, each_tensor_moved, emulated

OP = torch.ops.vision_kernels.attention_decomposition
NAME = r"vision_kernels\.attention_decomposition: "


def cpu_kernel(values, attn, folded, scale, offset=None, layers=None, out_dtype=None, check_finite=True):
    return attention_decomposition(
        values, attn, folded, scale, offset, layers, out_dtype=out_dtype, check_finite=check_finite
    )


def cuda_emulated(values, attn, folded, scale, offset=None, layers=None, out_dtype=None, check_finite=True):
    layer_list = list(range(values.shape[1])) if layers is None else list(layers)
    return emulated(OP)(values, attn, folded, scale, offset, layer_list, True, True, True, out_dtype, check_finite)


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def arguments(b: int = 2, nl: int = 3, n: int = 5, h: int = 2, d: int = 4, e: int = 6) -> dict[str, torch.Tensor]:
    return {
        "values": torch.randn(b, nl, n, h, d),
        "attn": torch.softmax(torch.randn(b, nl, h, n), -1),
        "folded": torch.randn(nl, h, d, e),
        "scale": torch.rand(b) + 0.5,
        "offset": torch.randn(b, nl, e),
    }


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("moved", ["values", "attn", "folded", "scale", "offset"])
def test_every_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    case = dict(each_tensor_moved(arguments()))[moved]
    other = "attn" if moved == "values" else moved
    with pytest.raises(ValueError, match=NAME + rf"arguments 'values' and '{other}' must be on the same device"):
        kernel(**case)


def test_all_meta_gives_shapes() -> None:
    meta = {name: t.to("meta") for name, t in arguments().items()}
    assert attention_decomposition(**meta, layers=[2, 0]).shape == (2, 2, 2, 5, 6)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([1.7], r"argument 'layers' must hold ints, got float 1.7 at position 0"),
        ([0, 2.0], r"argument 'layers' must hold ints, got float 2.0 at position 1"),
        ([True], r"argument 'layers' must hold ints, got bool True at position 0"),
        ([np.bool_(False)], r"argument 'layers' must hold ints, got bool (np\.)?False_? at position 0"),
        (torch.tensor([0.5]), r"argument 'layers' must hold ints, got Tensor"),
        (1, r"argument 'layers' must be a sequence of ints, got int 1"),
        ("01", r"argument 'layers' must be a sequence of ints, got str"),
    ],
)
def test_layers_must_be_ints(layers, message) -> None:
    with pytest.raises(TypeError, match=NAME + message):
        cpu_kernel(**arguments(), layers=layers)


def test_integer_layers_of_any_kind_are_accepted() -> None:
    inputs = arguments()
    want = cpu_kernel(**inputs, layers=[2, 0])
    for layers in ([np.int64(2), np.int32(0)], torch.tensor([2, 0]), (2, 0)):
        torch.testing.assert_close(cpu_kernel(**inputs, layers=layers), want)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"layers": [3]}, IndexError, r"argument 'layers' must hold layer indices in \[0, 3\), got 3 at position 0"),
        ({"layers": [0, -1]}, IndexError, r"argument 'layers' must hold layer indices in \[0, 3\), got -1 at"),
        ({"values": torch.full((2, 3, 5, 2, 4), math.nan)}, ValueError, r"argument 'values' must be finite"),
        ({"attn": torch.full((2, 3, 2, 5), math.inf)}, ValueError, r"argument 'attn' must be finite"),
        ({"folded": torch.full((3, 2, 4, 6), -math.inf)}, ValueError, r"argument 'folded' must be finite"),
        ({"scale": torch.tensor([1.0, math.nan])}, ValueError, r"argument 'scale' must be finite .*got nan at index"),
        ({"offset": torch.full((2, 3, 6), math.nan)}, ValueError, r"argument 'offset' must be finite"),
        ({"attn": torch.rand(2, 3, 2, 5).double()}, TypeError, r"argument 'attn' must have the dtype of 'values'"),
        ({"values": torch.ones(2, 3, 5, 2, 4, dtype=torch.long)}, TypeError, r"argument 'values' must have dtype"),
        ({"folded": torch.randn(3, 2, 5, 6)}, ValueError, r"argument 'folded' must have size 4 in dimension 2"),
        ({"offset": torch.randn(2, 6)}, ValueError, r"argument 'offset' must have 3 dimensions \[B, L, E\]"),
        ({"out_dtype": torch.int32}, TypeError, r"argument 'out_dtype' must be one of"),
    ],
)
def test_bad_input(kernel, change, error, message) -> None:
    with pytest.raises(error, match=NAME + message):
        kernel(**{**arguments(), **change})


def test_out_dtype_must_be_a_dtype() -> None:
    with pytest.raises(TypeError, match=NAME + r"argument 'out_dtype' must be a torch.dtype or None, got str"):
        cpu_kernel(**arguments(), out_dtype="float16")


@pytest.mark.parametrize("kernel", KERNELS)
def test_zero_images_and_the_finite_opt_out(kernel) -> None:
    assert kernel(**arguments(b=0)).shape == (0, 3, 2, 5, 6)
    nan = {**arguments(), "scale": torch.tensor([1.0, math.nan])}
    out = kernel(**nan, check_finite=False)
    assert bool(out[1].isnan().all()) and not bool(out[0].isnan().any())


def test_numpy_and_dlpack_inputs() -> None:
    inputs = {name: t.numpy() for name, t in arguments().items()}
    out = attention_decomposition(**inputs)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3, 2, 5, 6)
    foreign = attention_decomposition(**{name: DLPackProducer(a) for name, a in inputs.items()})
    assert isinstance(foreign, torch.Tensor)
    np.testing.assert_allclose(foreign.numpy(), out, rtol=1e-6)
