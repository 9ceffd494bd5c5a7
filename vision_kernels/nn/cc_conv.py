"""Continuous convolution layers (Shocher, Feinstein, Haim, Irani: From Discrete to Continuous Convolution
Layers, 2020): a convolution whose filter is a learned function of sub-pixel offsets and of the scale,
applied on the centred grid at any output size or scale chosen at call time.

    out[b, o, i, j] = bias[o]
                      + sum_{c, ky, kx} k_theta(dy_ky(i), dx_kx(j), sy, sx)[o, c] * in[b, c, y0(i) + ky, x0(j) + kx]

with ``dy_ky(i) = y0(i) + ky - y(i)`` the offset (in input pixels) of tap ky from output row i's position
``y(i) = i / sy + (H - 1) / 2 - (H' - 1) / (2 sy)`` (columns likewise; see
:mod:`vision_kernels.ops.cc_conv_grid`). The offsets of output i depend only on its phase, so the filter is
evaluated once per (phase_y, phase_x) pair and tap: ``Py * Px * Kh * Kw`` points, not once per output
pixel. It is evaluated per *pair* (not per axis) because ``k_theta`` is a general, non-separable function
of ``(dy, dx)``: the taps of output (i, j) depend on both phases jointly. The per-pair weights then go to
the fused gather-GEMM :func:`vision_kernels.ops.cc_conv2d`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ops._checks import FLOATING, ArgCheck
from ..ops.cc_conv import cc_conv2d
from ..ops.cc_conv_grid import PADDING_MODES, CCGrid, cc_conv2d_grid, int_pair, resolve_output

__all__ = ["FourierFeatures", "ContinuousFilter", "InterpolationFilter", "CCConv2d", "cubic"]


LAYER = "vision_kernels.nn.CCConv2d"


def _channels(value: object, name: str, function: str) -> int:
    return ArgCheck(function).integer(value, name, minimum=1)


def _hidden(value: object, function: str) -> tuple[int, ...]:
    widths = ArgCheck(function).integers(value, "hidden")
    if any(w < 1 for w in widths):
        ArgCheck(function).fail("hidden", f"must hold layer widths >= 1, got {list(widths)}")
    return tuple(widths)


def _positive_number(value: object, name: str, function: str, allow_zero: bool = False) -> float:
    check = ArgCheck(function)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        check.fail(name, f"must be a number, got {type(value).__name__} {value!r}", TypeError)
    number = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and (number >= 0 if allow_zero else number > 0)):
        check.fail(name, f"must be finite and {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return number


class FourierFeatures(nn.Module):
    """Random Fourier features ``gamma(p) = [sin(2 pi p B), cos(2 pi p B)]`` (Tancik et al. 2020).

    ``B`` is ``[in_features, features]`` with entries ``N(0, sigma^2)``, fixed at construction (a buffer,
    saved with the state dict). Larger ``sigma`` lets the MLP represent higher frequencies of the filter.
    """

    frequencies: Tensor  # [in_features, features] buffer

    def __init__(self, in_features: int = 2, features: int = 16, sigma: float = 1.0, *, seed: int = 0) -> None:
        super().__init__()
        function = "vision_kernels.nn.FourierFeatures"
        in_features = _channels(in_features, "in_features", function)
        features = _channels(features, "features", function)
        sigma = _positive_number(sigma, "sigma", function, allow_zero=True)
        generator = torch.Generator().manual_seed(ArgCheck(function).integer(seed, "seed"))
        self.register_buffer("frequencies", torch.randn(in_features, features, generator=generator) * sigma)

    @property
    def out_features(self) -> int:
        return 2 * int(self.frequencies.shape[1])

    def forward(self, points: Tensor) -> Tensor:
        """``[..., in_features] -> [..., 2 * features]``."""
        projected = 2 * math.pi * points @ self.frequencies.to(points.dtype)  # [..., features]
        return torch.cat((projected.sin(), projected.cos()), dim=-1)


class ContinuousFilter(nn.Module):
    """The continuous filter ``k_theta(dy, dx, sy, sx) -> [O, C]``: a small MLP.

    Inputs per point: the offsets ``(dy, dx)`` in input pixels divided by half the support (so the window
    maps to ``[-1, 1)``), optionally their Fourier features, and ``(log sy, log sx)`` (so up- and
    downscaling are symmetric inputs and scale 1 is 0). Hidden layers use GELU. The last layer's initial
    weights are scaled by ``1 / sqrt(C * Kh * Kw)`` so that the taps start with the magnitude of a
    default-initialized convolution of the same fan-in (scaling the initialization rather than the output
    keeps optimizer steps on the taps as large as on an ordinary convolution's weights).

    Args:
        in_channels, out_channels: C and O of the weights it produces.
        support: ``(Kh, Kw)``, to normalize the offsets.
        hidden: widths of the hidden layers.
        fourier_features: number of random frequencies (0: raw offsets only).
        fourier_sigma: standard deviation of the frequencies (cycles per half-support).
    """

    half_support: Tensor  # [2] buffer: (Kh / 2, Kw / 2)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        support: tuple[int, int],
        *,
        hidden: Sequence[int] = (32, 32),
        fourier_features: int = 0,
        fourier_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        function = "vision_kernels.nn.ContinuousFilter"
        in_channels = _channels(in_channels, "in_channels", function)
        out_channels = _channels(out_channels, "out_channels", function)
        support = int_pair(support, "support", function)
        hidden = _hidden(hidden, function)
        fourier_features = ArgCheck(function).integer(fourier_features, "fourier_features", 0)
        fourier_sigma = _positive_number(fourier_sigma, "fourier_sigma", function, allow_zero=True)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.register_buffer("half_support", torch.tensor([support[0] / 2, support[1] / 2]))
        self.fourier = FourierFeatures(2, fourier_features, fourier_sigma) if fourier_features > 0 else None
        width = 2 + (self.fourier.out_features if self.fourier is not None else 0) + 2
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU()]
            width = size
        last = nn.Linear(width, out_channels * in_channels)
        with torch.no_grad():
            gain = 1.0 / math.sqrt(in_channels * support[0] * support[1])
            last.weight.mul_(gain)
            last.bias.mul_(gain)
        self.mlp = nn.Sequential(*layers, last)

    def forward(self, offsets: Tensor, scale: tuple[float, float]) -> Tensor:
        """``offsets [..., 2]`` (dy, dx in input pixels) at scale ``(sy, sx)`` -> weights ``[..., O, C]``."""
        points = offsets / self.half_support.to(offsets.dtype)  # [..., 2] in [-1, 1)
        features = [points]
        if self.fourier is not None:
            features.append(self.fourier(points))
        log_scale = torch.tensor([math.log(scale[0]), math.log(scale[1])], dtype=offsets.dtype, device=offsets.device)
        features.append(log_scale.expand(*offsets.shape[:-1], 2))
        weights = self.mlp(torch.cat(features, dim=-1))  # [..., O * C]
        return weights.unflatten(-1, (self.out_channels, self.in_channels))


def cubic(t: Tensor, a: float = -0.5) -> Tensor:
    """The cubic convolution kernel of bicubic interpolation (Keys: ``a = -0.5``; ``F.interpolate``'s upscaling
    uses ``a = -0.75``); 1 at 0, 0 at the other integers and for ``|t| >= 2``."""
    t = t.abs()
    inner = ((a + 2) * t - (a + 3)) * t * t + 1
    outer = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, inner, torch.where(t < 2, outer, torch.zeros_like(t)))


class InterpolationFilter(nn.Module):
    """A resizing filter: bicubic interpolation as a prior, plus an optional learned correction.

    ``k(dy, dx, sy, sx)[o, c] = cubic(dy m_y) cubic(dx m_x) delta_oc / Z + r(dy, dx, sy, sx)[o, c]
    - mean_taps(r)[o, c]``

    with ``m = min(s, 1)`` (the cubic is stretched by ``1 / s`` when downscaling: antialiasing), the cubic's
    ``a`` as ``F.interpolate`` uses it (-0.75 when upscaling, -0.5 with ``antialias=True`` when downscaling;
    both give the identity at scale 1), ``Z`` the sum of the prior over the taps of each
    (phase_y, phase_x) pair, and ``r`` a :class:`ContinuousFilter` whose last layer starts at zero. The
    correction has zero sum over the taps of every pair, so the filter's DC gain stays exactly 1 on the
    diagonal (constant images stay constant) and 0 off it, whatever is learned: this removes the direction
    the image loss is most sensitive to, which lets the correction train with ordinary learning rates. At
    initialization the layer *is* (normalized) bicubic resizing. The prior needs a support of 4 (twice the cubic's
    radius) to be exact when upscaling, ``4 / s`` when downscaling (a smaller window truncates it).

    Takes offsets shaped ``[Py, Px, Kh, Kw, 2]`` (as :meth:`CCConv2d.weights` passes them).
    """

    def __init__(self, channels: int, support: tuple[int, int], *, learned: bool = True, **mlp: object) -> None:
        super().__init__()
        function = "vision_kernels.nn.InterpolationFilter"
        channels = _channels(channels, "channels", function)
        support = int_pair(support, "support", function)
        self.channels = channels
        self.correction = ContinuousFilter(channels, channels, support, **mlp) if learned else None  # type: ignore[arg-type]
        if self.correction is not None:
            last = self.correction.mlp[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, offsets: Tensor, scale: tuple[float, float]) -> Tensor:
        """``offsets [Py, Px, Kh, Kw, 2]`` -> ``[Py, Px, Kh, Kw, O, C]``."""
        taps = [cubic(offsets[..., axis] * min(s, 1.0), -0.75 if s > 1 else -0.5) for axis, s in enumerate(scale)]
        prior = taps[0] * taps[1]  # [Py, Px, Kh, Kw]
        norm = prior.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        eye = torch.eye(self.channels, dtype=offsets.dtype, device=offsets.device)
        weights = prior[..., None, None] * eye  # [Py, Px, Kh, Kw, C, C]
        if self.correction is not None:
            correction = self.correction(offsets, scale)  # [Py, Px, Kh, Kw, C, C]
            weights = weights + (correction - correction.mean(dim=(2, 3), keepdim=True)) * norm[..., None, None]
        return weights / norm[..., None, None]


class CCConv2d(nn.Module):
    """Continuous convolution layer: a convolution or a learned resize to any size or scale.

    ``layer(x)`` is a "same" convolution (scale 1); ``layer(x, scale=(sy, sx))`` or ``layer(x, size=(h, w))``
    resamples on the centred grid at that scale (any positive values, different per axis, chosen per call).
    The filter (a :class:`ContinuousFilter` unless ``filter`` is given) is evaluated once per
    (phase_y, phase_x) pair and tap of the call's grid (see :func:`vision_kernels.ops.cc_conv2d_grid`) and the
    resulting ``[Py, Px, O, C, Kh, Kw]`` weights go to :func:`vision_kernels.ops.cc_conv2d`.

    At scale 1 there is one phase with integer offsets ``-(K-1)/2 .. (K-1)/2`` (odd K): the layer is exactly
    ``F.conv2d(x, taps, bias, padding=K // 2)`` with
    ``taps[o, c, ky, kx] = k_theta(ky - (Kh-1)/2, kx - (Kw-1)/2, 1, 1)[o, c]``.

    Args:
        in_channels, out_channels: C and O.
        support: ``K`` or ``(Kh, Kw)``, the window in input pixels. Each output reads the ``K`` input pixels
            in ``[x - K/2, x + K/2)`` per axis; ``K * scale >= 1`` is required so that every input pixel is
            in some output's window (e.g. ``K >= 2`` to halve, ``K >= 4`` to quarter).
        bias: learn a bias per output channel.
        padding_mode: ``"zeros"`` or ``"replicate"`` (taps outside the input read 0 or the edge pixel).
        hidden, fourier_features, fourier_sigma: the default filter's MLP (see :class:`ContinuousFilter`).
        filter: any module mapping ``(offsets [Py, Px, Kh, Kw, 2], scale (sy, sx))`` to
            ``[Py, Px, Kh, Kw, O, C]`` weights, instead of the default MLP (e.g. :class:`InterpolationFilter`
            or an analytic kernel).
        check_finite: NaN or Inf in the input (or in the filter's weights or the bias) raises ValueError,
            as for every op (:func:`vision_kernels.ops.cc_conv2d`); ``False`` skips that extra pass over
            the input (then NaN propagates to the affected outputs).

    Dtypes: the filter runs in the dtype of its own parameters (float32 by default, whatever the input),
    and its taps and the bias are cast to the input's dtype: float32, float64, float16 and bfloat16
    inputs all work (``layer.double()`` evaluates the filter in float64 too).

    Cost: ``Py * Px * Kh * Kw`` filter evaluations of ``O * C`` outputs each per call; ``Py`` is the numerator
    ``p`` of the scale ``p / q`` in lowest terms (3 at 1.5, 7 at 0.7, 27 at 2.7), at most the output size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        support: int | Sequence[int] = 3,
        *,
        bias: bool = True,
        padding_mode: str = "zeros",
        hidden: Sequence[int] = (32, 32),
        fourier_features: int = 0,
        fourier_sigma: float = 1.0,
        filter: nn.Module | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        check = ArgCheck(LAYER)
        self.in_channels = _channels(in_channels, "in_channels", LAYER)
        self.out_channels = _channels(out_channels, "out_channels", LAYER)
        self.support = int_pair(support, "support", LAYER)
        check.choice(padding_mode, "padding_mode", PADDING_MODES)
        for flag, name in ((bias, "bias"), (check_finite, "check_finite")):
            if not isinstance(flag, bool):
                check.fail(name, f"must be a bool, got {type(flag).__name__} {flag!r}", TypeError)
        if filter is not None and not isinstance(filter, nn.Module):
            check.fail("filter", f"must be an nn.Module or None, got {type(filter).__name__}", TypeError)
        self.padding_mode = padding_mode
        self.check_finite = check_finite
        self.filter = (
            filter
            if filter is not None
            else ContinuousFilter(
                self.in_channels,
                self.out_channels,
                self.support,
                hidden=hidden,
                fourier_features=fourier_features,
                fourier_sigma=fourier_sigma,
            )
        )
        if bias:
            bound = 1.0 / math.sqrt(self.in_channels * self.support[0] * self.support[1])
            self.bias: nn.Parameter | None = nn.Parameter(torch.empty(self.out_channels).uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)

    def grid(
        self,
        in_size: tuple[int, int],
        *,
        size: Sequence[int] | int | None = None,
        scale: Sequence[float] | float | None = None,
    ) -> CCGrid:
        """The call's grid (output size, scales, phases and tap offsets)."""
        return cc_conv2d_grid(in_size, self.support, size=size, scale=scale)

    def weights(
        self,
        grid: CCGrid,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        filter_scale: tuple[float, float] | None = None,
    ) -> Tensor:
        """``[Py, Px, O, C, Kh, Kw]``: the filter evaluated at every (phase_y, phase_x) pair and tap of ``grid``,
        conditioned on ``filter_scale`` (default: the grid's scale)."""
        offsets = grid.tap_offsets(dtype, device)  # [Py, Px, Kh, Kw, 2]
        weights = self.filter(offsets, filter_scale or grid.scale)  # [Py, Px, Kh, Kw, O, C]
        return weights.permute(0, 1, 4, 5, 2, 3)

    def forward(
        self,
        x: Tensor,
        scale: Sequence[float] | float | None = None,
        size: Sequence[int] | int | None = None,
        *,
        filter_scale: Sequence[float] | float | None = None,
    ) -> Tensor:
        """``x [B, C, H, W]`` -> ``[B, O, H', W']`` at ``scale`` and/or ``size`` (scale 1 if neither).

        ``filter_scale`` conditions the filter on another scale than the grid's, e.g. a refinement layer at
        scale 1 told the scale its network is resizing by (default: the grid's scale).
        """
        check = ArgCheck(LAYER)
        check.tensor(x, "x")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            check.fail("x", f"must have shape [B, {self.in_channels}, H, W], got {list(x.shape)}")
        check.floating(x, "x")
        if min(x.shape[2], x.shape[3]) < 1:
            check.fail("x", f"must have H >= 1 and W >= 1, got shape {list(x.shape)}")
        for name, tensor in self.named_parameters():
            if tensor.device != x.device:
                check.fail("x", f"must be on the layer's device ({tensor.device}, parameter '{name}'), got {x.device}")
        in_size = (int(x.shape[2]), int(x.shape[3]))
        resolve_output(in_size, size, scale, function=LAYER)  # bad or huge sizes/scales, named for this layer
        grid = self.grid(in_size, size=size, scale=scale)
        check.allocation((x.shape[0], self.out_channels, *grid.out_size), x.dtype, x.device, "scale")
        py, px = grid.phases
        weight_shape = (py, px, self.out_channels, self.in_channels, *self.support)
        check.allocation(weight_shape, x.dtype, x.device, "scale")
        conditioning = None
        if filter_scale is not None:
            conditioning = (
                (float(filter_scale), float(filter_scale))
                if isinstance(filter_scale, (int, float))
                else (float(filter_scale[0]), float(filter_scale[1]))
            )
            if not all(math.isfinite(v) and v > 0 for v in conditioning):
                raise ValueError(
                    f"vision_kernels.nn.CCConv2d: argument 'filter_scale' must be > 0, got {filter_scale!r}"
                )
        filter_dtype = self._filter_dtype(x.dtype)
        weight = self.weights(grid, dtype=filter_dtype, device=x.device, filter_scale=conditioning).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return cc_conv2d(
            x,
            weight,
            bias,
            size=grid.out_size,
            scale=grid.scale,
            padding_mode=self.padding_mode,
            check_finite=self.check_finite,
        )

    def _filter_dtype(self, fallback: torch.dtype) -> torch.dtype:
        """The dtype of the filter's first floating parameter or buffer (``fallback`` if it has none)."""
        for tensor in (*self.filter.parameters(), *self.filter.buffers()):
            if tensor.dtype in FLOATING:
                return tensor.dtype
        return fallback

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, support={self.support}, bias={self.bias is not None}, "
            f"padding_mode={self.padding_mode!r}" + ("" if self.check_finite else ", check_finite=False")
        )
