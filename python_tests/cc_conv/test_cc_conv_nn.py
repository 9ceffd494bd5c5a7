"""CCConv2d: reduction to F.conv2d at scale 1, any scale chosen per call, per-phase filter evaluation, the
misalignment of strided convolutions versus the centred grid, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision_kernels.nn import CCConv2d, ContinuousFilter, InterpolationFilter, cubic
from vision_kernels.nn.alignment import centroid, downscale_drift
from vision_kernels.ops import cc_conv2d_grid
from vision_kernels.reference.cc_conv import cc_conv2d as reference
from vision_kernels.reference.cc_conv import strided_shift


class ConstantFilter(nn.Module):
    """A filter constant over offsets and scales: every tap is the same learned [O, C] matrix."""

    def __init__(self, out_channels: int, in_channels: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.randn(out_channels, in_channels))

    def forward(self, offsets: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
        return self.value.expand(*offsets.shape[:-1], *self.value.shape).to(offsets.dtype)


class CountingFilter(ContinuousFilter):
    """Records how many points the filter is evaluated at."""

    calls: list[int]

    def forward(self, offsets: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
        self.calls.append(offsets[..., 0].numel())
        return super().forward(offsets, scale)


def integer_taps(layer: CCConv2d) -> torch.Tensor:
    """``[O, C, Kh, Kw]``: the layer's filter at the integer offsets -(K-1)/2 .. (K-1)/2 (odd K), scale 1."""
    kh, kw = layer.support
    dy, dx = torch.meshgrid(torch.arange(kh) - (kh - 1) / 2, torch.arange(kw) - (kw - 1) / 2, indexing="ij")
    offsets = torch.stack((dy, dx), dim=-1).to(torch.float64)  # [Kh, Kw, 2]
    return layer.filter(offsets[None, None], (1.0, 1.0))[0, 0].permute(2, 3, 0, 1)


@pytest.mark.parametrize("support", [1, 3, (5, 3)])
def test_scale_one_is_exactly_a_convolution_with_the_filter_taps(support) -> None:
    layer = CCConv2d(4, 6, support, fourier_features=4).double()
    x = torch.randn(2, 4, 11, 9, dtype=torch.float64)
    taps = integer_taps(layer)
    padding = (layer.support[0] // 2, layer.support[1] // 2)
    expected = F.conv2d(x, taps, layer.bias, padding=padding)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x, scale=1.0), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x, size=(11, 9)), expected, rtol=1e-12, atol=1e-12)
    # Replicate padding: the same convolution of the edge-padded input.
    replicate = CCConv2d(4, 6, support, padding_mode="replicate", filter=layer.filter).double()
    replicate.bias = layer.bias
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), mode="replicate")
    torch.testing.assert_close(replicate(x), F.conv2d(padded, taps, layer.bias), rtol=1e-12, atol=1e-12)


def test_constant_filter_reduces_exactly_to_conv2d() -> None:
    # The filter constant over offsets: every tap is W0, i.e. F.conv2d with W0 repeated over the 3 x 3 window.
    filter = ConstantFilter(5, 3).double()
    layer = CCConv2d(3, 5, 3, filter=filter).double()
    x = torch.randn(2, 3, 8, 10, dtype=torch.float64)
    taps = filter.value[:, :, None, None].expand(5, 3, 3, 3)
    torch.testing.assert_close(layer(x), F.conv2d(x, taps, layer.bias, padding=1), rtol=1e-12, atol=1e-12)
    # float32: the same up to summation order.
    layer32, x32 = CCConv2d(3, 5, 3, filter=ConstantFilter(5, 3)), x.float()
    taps32 = layer32.filter.value[:, :, None, None].expand(5, 3, 3, 3)
    torch.testing.assert_close(layer32(x32), F.conv2d(x32, taps32, layer32.bias, padding=1), rtol=1e-5, atol=1e-5)


def test_even_support_at_scale_one() -> None:
    # K = 4: the window [x - 2, x + 2) holds offsets -2, -1, 0, 1: padding 2 before and 1 after.
    layer = CCConv2d(2, 3, 4).double()
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64)
    dy, dx = torch.meshgrid(torch.arange(4) - 2.0, torch.arange(4) - 2.0, indexing="ij")
    taps = layer.filter(torch.stack((dy, dx), -1)[None, None].double(), (1.0, 1.0))[0, 0].permute(2, 3, 0, 1)
    expected = F.conv2d(F.pad(x, (2, 1, 2, 1)), taps, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_any_scale_chosen_at_call_time_matches_the_reference() -> None:
    layer = CCConv2d(3, 4, 4, fourier_features=8).double()
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64, requires_grad=True)
    for kwargs in ({"scale": 1.3}, {"scale": (2.7, 0.6)}, {"size": (7, 25)}, {"scale": 0.35}):
        out = layer(x, **kwargs)
        grid = layer.grid((10, 12), **kwargs)
        weight = layer.weights(grid, dtype=torch.float64)
        expected = reference(x, weight, layer.bias, size=grid.out_size, scale=grid.scale)
        assert out.shape == (2, 4, *grid.out_size)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        # Gradients reach the filter's MLP parameters and the input.
        params = [p for p in layer.parameters()]
        ours = torch.autograd.grad(out.square().sum(), [x, *params])
        theirs = torch.autograd.grad(expected.square().sum(), [x, *params])
        for a, e in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


def test_filter_is_evaluated_once_per_phase_pair_and_tap() -> None:
    filter = CountingFilter(2, 3, (4, 3))
    filter.calls = []
    layer = CCConv2d(2, 3, (4, 3), filter=filter)
    layer(torch.randn(1, 2, 20, 30), scale=(1.5, 0.7))  # 3 row phases, 7 column phases
    assert filter.calls == [3 * 7 * 4 * 3]  # not 30 x 21 output pixels x 12 taps


def test_gradcheck_through_the_module() -> None:
    layer = CCConv2d(1, 2, 3, hidden=(4,)).double()
    x = torch.randn(1, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: layer(t, scale=(1.5, 0.75)), (x,))


def test_interpolation_filter_starts_as_bicubic() -> None:
    # Learned correction zero at initialization: the layer is F.interpolate's bicubic on the same centred grid
    # (a = -0.75 upscaling, edge pixels replicated; a = -0.5 stretched by 1 / s downscaling, as antialias=True,
    # compared away from the borders, where F.interpolate renormalizes the truncated kernel instead).
    layer = CCConv2d(1, 1, 8, bias=False, padding_mode="replicate", filter=InterpolationFilter(1, (8, 8))).double()
    x = torch.rand(2, 1, 20, 20, dtype=torch.float64)
    for size in (30, 47):
        expected = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
        torch.testing.assert_close(layer(x, size=size), expected, rtol=1e-5, atol=1e-6)  # torch: fp32 weights
    expected = F.interpolate(x, size=(13, 13), mode="bicubic", antialias=True, align_corners=False)
    inner = (..., slice(4, -4), slice(4, -4))
    torch.testing.assert_close(layer(x, size=13)[inner], expected[inner], rtol=1e-5, atol=1e-6)
    # DC gain 1 whatever the correction learns: constant images stay constant.
    with torch.no_grad():
        for p in layer.filter.parameters():
            p.normal_()
    ones = torch.ones(1, 1, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(layer(ones, scale=(1.7, 0.6)), torch.ones(1, 1, 15, 5, dtype=torch.float64))
    for a in (-0.5, -0.75):
        assert cubic(torch.tensor([0.0, 1.0, -1.0, 2.0, 2.5]), a).tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
        for phase in (0.0, 0.3, 0.5):  # a partition of unity: sum_k cubic(k - phase) = 1
            total = cubic(torch.arange(-3, 4, dtype=torch.float64) - phase, a).sum()
            torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))


# ---------------------------------------------------------------- the misalignment claim


@pytest.mark.parametrize("layers", [1, 3])
def test_strided_convolutions_drift_and_the_cc_layer_keeps_the_centred_grid(layers: int) -> None:
    # A symmetric blob centred on the centre of a 64 x 64 image, downscaled `layers` times by 2: by 3x3 / stride 2
    # / padding 1 binomial convolutions (output k centred on input 2k), and by CC layers at scale 1/2 on the
    # centred grid (output k at 2k + 1/2; a symmetric bicubic filter on a symmetric 4-tap window).
    drift = downscale_drift(layers=layers, size=64)
    out = 64 // 2**layers
    assert drift.strided.shape == drift.centred.shape == (1, 1, out, out)
    # The CC stack keeps the blob exactly on the output's centre ((out - 1) / 2, (out - 1) / 2).
    assert max(abs(v) for v in drift.cc_shift) < 1e-9
    row, col = centroid(drift.centred)
    assert row == pytest.approx((out - 1) / 2, abs=1e-12) and col == pytest.approx((out - 1) / 2, abs=1e-12)
    # The strided stack moved it by half an input pixel per layer: (2^L - 1) / 2 original pixels.
    assert drift.predicted_strided_shift == (2**layers - 1) / 2 == strided_shift(layers)
    for shift in drift.strided_shift:
        assert shift == pytest.approx(drift.predicted_strided_shift, abs=0.02)


def test_one_strided_layer_shifts_by_half_an_input_pixel() -> None:
    size = 32
    x = torch.arange(size, dtype=torch.float64)
    ramp = x[None, None, None, :].expand(1, 1, 1, size)  # the value of each pixel is its own column
    box = torch.full((1, 1, 1, 3), 1 / 3, dtype=torch.float64)
    strided = F.conv2d(ramp, box, stride=(1, 2), padding=(0, 1))[0, 0, 0]  # [16]
    grid = cc_conv2d_grid((1, size), (1, 3), size=(1, size // 2))
    assert grid.x.offsets.shape == (1, 3)
    cc = CCConv2d(1, 1, (1, 4), bias=False, filter=InterpolationFilter(1, (1, 4), learned=False)).double()
    centred = cc(ramp, size=(1, size // 2))[0, 0, 0]
    k = torch.arange(size // 2, dtype=torch.float64)
    # Interior outputs (away from the zero/replicate borders) read the column they sit at.
    torch.testing.assert_close(centred[2:-2], 2 * k[2:-2] + 0.5)  # the centred grid: 2k + 1/2
    torch.testing.assert_close(strided[1:-1], 2 * k[1:-1])  # strided: 2k, half an input pixel off


# ---------------------------------------------------------------- bad input


def test_bad_input() -> None:
    layer = CCConv2d(3, 4, 3)
    x = torch.randn(1, 3, 10, 10)
    with pytest.raises(
        ValueError,
        match=r"vision_kernels\.nn\.CCConv2d: argument 'x' must have shape \[B, 3, H, W\], got \[1, 2, 10, 10\]",
    ):
        layer(torch.randn(1, 2, 10, 10))
    with pytest.raises(ValueError, match=r"argument 'scale' must be finite and > 0, got -1.0"):
        layer(x, scale=-1.0)
    with pytest.raises(ValueError, match=r"argument 'size' must be >= 1, got 0 for the height"):
        layer(x, size=(0, 5))
    with pytest.raises(ValueError, match=r"argument 'support' is too small for the scale: support 3 x scale 0.25 < 1"):
        layer(x, scale=0.25)
    with pytest.raises(ValueError, match=r"argument 'filter_scale' must be > 0"):
        layer(x, filter_scale=0.0)
    with pytest.raises(ValueError, match=r"argument 'support' must be >= 1, got 0"):
        CCConv2d(3, 4, 0)
    with pytest.raises(ValueError, match=r"argument 'padding_mode' must be one of"):
        CCConv2d(3, 4, 3, padding_mode="circular")
