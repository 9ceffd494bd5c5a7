"""cc_conv2d, its gradient ops, cc_conv2d_grid and the nn layers (CCConv2d, ContinuousFilter, FourierFeatures,
InterpolationFilter) refuse bad input with one clear message (issue 16 items 1, 2, 4, 9), on the CPU kernel
and the emulated CUDA kernel: every tensor argument on another device, zero/negative/float sizes and
supports, NaN/Inf (CCConv2d no longer switches the finite check off itself), outputs too large for memory
(checked before anything is allocated), float64 input to CCConv2d, numpy and DLPack inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vision_kernels.nn import CCConv2d, ContinuousFilter, FourierFeatures, InterpolationFilter
from vision_kernels.ops import cc_conv2d, cc_conv2d_grid
from vision_kernels.testing import DLPackProducer, each_tensor_moved, emulated

OPS = torch.ops.vision_kernels
F_NAME = r"vision_kernels\.cc_conv2d: "
GRID = r"vision_kernels\.cc_conv2d_grid: "
LAYER = r"vision_kernels\.nn\.CCConv2d: "


def forward_arguments() -> dict[str, torch.Tensor]:
    grid = cc_conv2d_grid((6, 7), 3, scale=1.5)
    return {
        "input": torch.randn(2, 3, 6, 7),
        "weight": torch.randn(*grid.phases, 4, 3, 3, 3),
        "bias": torch.randn(4),
    }


def cpu_forward(input, weight, bias, scale=1.5, check_finite=True):
    return cc_conv2d(input, weight, bias, scale=scale, check_finite=check_finite)


def emulated_forward(input, weight, bias, scale=1.5, check_finite=True):
    h, w = (math.floor(n * scale + 1e-6) for n in input.shape[2:])
    return emulated(OPS.cc_conv2d)(input, weight, bias, [h, w], [scale, scale], "zeros", check_finite)


KERNELS = [
    pytest.param(cpu_forward, id="cpu"),
    pytest.param(emulated_forward, id="cuda_emulated", marks=pytest.mark.emulation),
]


# ---------------------------------------------------------------- devices of every tensor argument


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("moved", ["input", "weight", "bias"])
def test_forward_refuses_any_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    case = dict(each_tensor_moved(forward_arguments()))[moved]
    other = "weight" if moved == "input" else moved
    with pytest.raises(ValueError, match=F_NAME + rf"arguments 'input' and '{other}' must be on the same device"):
        kernel(**case)


@pytest.mark.parametrize("device", ["cpu", "cuda_emulated"])
def test_gradient_ops_refuse_mixed_devices(device: str) -> None:
    if device == "cuda_emulated":
        pytest.importorskip("vision_kernels._C_emu")
    grad, x = torch.randn(2, 4, 9, 10), torch.randn(2, 3, 6, 7)
    w = forward_arguments()["weight"]
    grad_input = OPS.cc_conv2d_grad_input if device == "cpu" else emulated(OPS.cc_conv2d_grad_input)
    grad_weight = OPS.cc_conv2d_grad_weight if device == "cpu" else emulated(OPS.cc_conv2d_grad_weight)
    with pytest.raises(ValueError, match=r"cc_conv2d_grad_input: arguments 'grad' and 'weight' must be on the same"):
        grad_input(grad, w.to("meta"), [6, 7], [1.5, 1.5], "zeros")
    with pytest.raises(ValueError, match=r"cc_conv2d_grad_weight: arguments 'grad' and 'input' must be on the same"):
        grad_weight(grad.to("meta"), x, [3, 3], [1.5, 1.5], "zeros")


def test_all_meta_gives_shapes() -> None:
    meta = {name: t.to("meta") for name, t in forward_arguments().items()}
    assert cpu_forward(**meta).shape == (2, 4, 9, 10)


# ---------------------------------------------------------------- values, dtypes, empty inputs


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"bias": torch.tensor([0.0, math.nan, 0.0, 0.0])}, ValueError, r"argument 'bias' must be finite"),
        ({"input": torch.full((2, 3, 6, 7), math.inf)}, ValueError, r"argument 'input' must be finite"),
        ({"input": torch.randn(2, 3, 6, 7).double()}, TypeError, r"argument 'weight' must have the dtype of 'input'"),
        ({"input": torch.ones(2, 3, 6, 7, dtype=torch.long)}, TypeError, r"argument 'input' must have dtype in"),
        ({"input": torch.randn(2, 0, 6, 7)}, ValueError, r"argument 'input' must have size >= 1 in dimension 1"),
        ({"input": torch.randn(2, 3, 0, 7)}, ValueError, r"argument 'input' must have size >= 1 in dimension 2"),
        ({"bias": torch.randn(4, 1)}, ValueError, r"argument 'bias' must have 1 dimensions \[O\]"),
    ],
)
def test_forward_bad_values(kernel, change, error, message) -> None:
    with pytest.raises(error, match=F_NAME + message):
        kernel(**{**forward_arguments(), **change})


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_batch_gives_an_empty_output(kernel) -> None:
    arguments = forward_arguments()
    assert kernel(arguments["input"][:0], arguments["weight"], arguments["bias"]).shape == (0, 4, 9, 10)


def test_output_too_large_for_memory_is_refused_before_allocating() -> None:
    arguments = forward_arguments()
    with pytest.raises(ValueError, match=F_NAME + r"argument 'scale' gives an output of shape \[6000000000000, 7"):
        cc_conv2d(**arguments, scale=1e12)  # was a 43 TiB allocation attempt
    with pytest.raises(ValueError, match=F_NAME + r"argument 'size' gives an output of .* more than the .* of memory"):
        cc_conv2d(**arguments, size=(10**6, 10**6))


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_op_checks_its_whole_output_size(kernel) -> None:
    """Batch and output channels count too: a stride-0 batch of 2**31 images needs ~3 TiB of output."""
    arguments = forward_arguments()
    huge = arguments["input"][:1].expand(2**31, -1, -1, -1)
    with pytest.raises(ValueError, match=F_NAME + r"argument 'size' gives an output of shape \[2147483648, 4, 9, 10\]"):
        kernel(huge, arguments["weight"], arguments["bias"], check_finite=False)


# ---------------------------------------------------------------- the grid


@pytest.mark.parametrize(
    ("in_size", "support", "options", "error", "message"),
    [
        ((0, 7), 3, {}, ValueError, r"argument 'in_size' must be >= 1, got 0 for the height"),
        ((7, -7), 3, {}, ValueError, r"argument 'in_size' must be >= 1, got -7 for the width"),
        ((7.5, 7), 3, {}, TypeError, r"argument 'in_size' must be an int or a pair of ints"),
        ((7, 7, 7), 3, {}, TypeError, r"argument 'in_size' must be an int or a pair of ints"),
        ((7, 7), 3.5, {}, TypeError, r"argument 'support' must be an int or a pair of ints \(height, width\), got 3.5"),
        ((7, 7), True, {}, TypeError, r"argument 'support' must be an int or a pair of ints"),
        ((7, 7), (3, 0), {}, ValueError, r"argument 'support' must be >= 1, got 0 for the width"),
        ((7, 7), -3, {}, ValueError, r"argument 'support' must be >= 1, got -3"),
        ((7, 7), 3, {"size": (0, 4)}, ValueError, r"argument 'size' must be >= 1, got 0 for the height"),
        ((7, 7), 3, {"size": 2.5}, TypeError, r"argument 'size' must be an int or a pair of ints"),
        ((7, 7), 3, {"size": (True, 4)}, TypeError, r"argument 'size' must be an int or a pair of ints"),
        ((7, 7), 3, {"scale": math.nan}, ValueError, r"argument 'scale' must be finite and > 0, got nan"),
        ((7, 7), 3, {"scale": 0.0}, ValueError, r"argument 'scale' must be finite and > 0, got 0.0"),
        ((7, 7), 3, {"scale": True}, TypeError, r"argument 'scale' must be a number or a pair"),
        ((7, 7), 3, {"scale": 1e12}, ValueError, r"argument 'scale' gives an output of shape \[7000000000000, 70"),
        ((7, 7), 3, {"scale": 1e300}, ValueError, r"argument 'scale' gives an output of 7e\+300 pixels for the"),
        ((7, 7), 3, {"scale": 0.01}, ValueError, r"argument 'scale' gives an empty output"),
    ],
)
def test_grid_bad_input(in_size, support, options, error, message) -> None:
    with pytest.raises(error, match=GRID + message):
        cc_conv2d_grid(in_size, support, **options)


def test_grid_accepts_numpy_integers() -> None:
    grid = cc_conv2d_grid((np.int64(7), np.int32(6)), np.int64(3), scale=1.5)
    assert grid.out_size == (10, 9)


# ---------------------------------------------------------------- the layers


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: CCConv2d(-2, 3), ValueError, LAYER + r"argument 'in_channels' must be >= 1, got -2"),
        (lambda: CCConv2d(3, 0), ValueError, LAYER + r"argument 'out_channels' must be >= 1, got 0"),
        (lambda: CCConv2d(2.5, 3), TypeError, LAYER + r"argument 'in_channels' must be an int, got float 2.5"),
        (lambda: CCConv2d(True, 3), TypeError, LAYER + r"argument 'in_channels' must be an int, got bool"),
        (lambda: CCConv2d(3, 3, support=3.5), TypeError, LAYER + r"argument 'support' must be an int or a pair"),
        (lambda: CCConv2d(3, 3, support=(3, 0)), ValueError, LAYER + r"argument 'support' must be >= 1, got 0 for"),
        (lambda: CCConv2d(3, 3, padding_mode="circular"), ValueError, LAYER + r"argument 'padding_mode' must be"),
        (lambda: CCConv2d(3, 3, bias="yes"), TypeError, LAYER + r"argument 'bias' must be a bool, got str"),
        (lambda: CCConv2d(3, 3, check_finite=None), TypeError, LAYER + r"argument 'check_finite' must be a bool"),
        (lambda: CCConv2d(3, 3, filter=lambda o, s: o), TypeError, LAYER + r"argument 'filter' must be an nn.Module"),
        (
            lambda: CCConv2d(3, 3, hidden=(32, 0)),
            ValueError,
            r"vision_kernels\.nn\.ContinuousFilter: argument 'hidden' must hold layer widths >= 1, got \[32, 0\]",
        ),
        (
            lambda: CCConv2d(3, 3, hidden=(32.0,)),
            TypeError,
            r"ContinuousFilter: argument 'hidden' must hold ints, got float 32.0 at position 0",
        ),
        (
            lambda: CCConv2d(3, 3, fourier_features=-1),
            ValueError,
            r"ContinuousFilter: argument 'fourier_features' must be >= 0, got -1",
        ),
        (
            lambda: CCConv2d(3, 3, fourier_features=4, fourier_sigma=math.nan),
            ValueError,
            r"ContinuousFilter: argument 'fourier_sigma' must be finite and >= 0, got nan",
        ),
        (lambda: FourierFeatures(2, 0), ValueError, r"FourierFeatures: argument 'features' must be >= 1, got 0"),
        (lambda: FourierFeatures(2, 4, sigma="1"), TypeError, r"FourierFeatures: argument 'sigma' must be a number"),
        (lambda: ContinuousFilter(3, 3, (3, 3.5)), TypeError, r"ContinuousFilter: argument 'support' must be an int"),
        (lambda: InterpolationFilter(0, (4, 4)), ValueError, r"InterpolationFilter: argument 'channels' must be >= 1"),
    ],
)
def test_layer_arguments(make, error, message) -> None:
    with pytest.raises(error, match=message):
        make()


def test_layer_refuses_nan_input_by_default_and_has_a_documented_opt_out() -> None:
    x = torch.randn(1, 3, 8, 8)
    x[0, 1, 2, 3] = math.nan
    with pytest.raises(ValueError, match=F_NAME + r"argument 'input' must be finite \(no NaN or Inf\), got nan at"):
        CCConv2d(3, 4)(x)
    with pytest.raises(ValueError, match=F_NAME + r"argument 'input' must be finite"):
        CCConv2d(3, 4)(x, scale=0.5)
    unchecked = CCConv2d(3, 4, check_finite=False)
    assert "check_finite=False" in repr(unchecked)
    out = unchecked(x)
    assert bool(out[0, :, 2, 3].isnan().all()) and not bool(out[0, :, 6:, 6:].isnan().any())


def test_layer_refuses_a_filter_that_produces_nan() -> None:
    layer = CCConv2d(3, 4)
    with torch.no_grad():
        layer.filter.mlp[-1].bias.fill_(math.inf)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=F_NAME + r"argument 'weight' must be finite"):
        layer(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_layer_runs_on_other_input_dtypes(dtype: torch.dtype) -> None:
    """The float32 filter is evaluated in float32, its taps cast to the input's dtype (float64 used to fail with
    "mat1 and mat2 must have the same dtype")."""
    layer = CCConv2d(3, 4, 3)
    x = torch.randn(2, 3, 9, 8)
    want = layer(x, scale=1.5).double()
    got = layer(x.to(dtype), scale=1.5)
    assert got.dtype == dtype and got.shape == (2, 4, 13, 12)
    tolerance = {torch.float64: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1.5e-1}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance)
    doubled = CCConv2d(3, 4, 3).double()  # a float64 filter with float32 input: taps cast down
    assert doubled(x).dtype == torch.float32


def test_layer_forward_bad_input() -> None:
    layer = CCConv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match=LAYER + r"argument 'scale' gives an output of shape \[8000000000000, 80"):
        layer(x, scale=1e12)
    with pytest.raises(ValueError, match=LAYER + r"argument 'scale' gives an output of .* more than the"):
        layer(x, scale=(1e6, 1e6))
    with pytest.raises(ValueError, match=LAYER + r"argument 'size' must be >= 1, got -1 for the width"):
        layer(x, size=(4, -1))
    with pytest.raises(TypeError, match=LAYER + r"argument 'x' must have dtype in .*got int64"):
        layer(x.long())
    with pytest.raises(TypeError, match=LAYER + r"argument 'x' must be a torch.Tensor"):
        layer(x.numpy())
    with pytest.raises(ValueError, match=LAYER + r"argument 'x' must have H >= 1 and W >= 1, got shape \[1, 3, 0, 8\]"):
        layer(torch.randn(1, 3, 0, 8))
    with pytest.raises(ValueError, match=LAYER + r"argument 'x' must be on the layer's device \(cpu, parameter"):
        layer(x.to("meta"))
    assert layer(x[:0]).shape == (0, 4, 8, 8)  # zero images: an empty batch, not an error


def test_numpy_and_dlpack_inputs() -> None:
    arguments = {name: t.numpy() for name, t in forward_arguments().items()}
    out = cc_conv2d(**arguments, scale=1.5)
    assert isinstance(out, np.ndarray) and out.shape == (2, 4, 9, 10)
    foreign = cc_conv2d(*(DLPackProducer(a) for a in arguments.values()), scale=1.5)
    assert isinstance(foreign, torch.Tensor)
    np.testing.assert_allclose(foreign.numpy(), out)
