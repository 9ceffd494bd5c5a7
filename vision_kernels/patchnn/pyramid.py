"""Space-time Gaussian pyramids for GPNN (images, ``T = 1``) and VGPNN (videos).

Everything is ``[T, H, W, C]``. The spatial and temporal factors are separate: each level is the
finest one scaled by ``ratio**-i`` in H and W and by ``temporal_ratio**-i`` in T (never below
``coarsest_frames``), the coarsest level having its shorter spatial side equal to ``coarsest``.
Downscaling is antialiased (a low-pass before subsampling, like a Gaussian pyramid); upscaling
is (bi/tri)linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pyramid_shapes", "scaled_shapes", "resize", "build_pyramid", "level_scales"]


def level_scales(
    shape: Sequence[int],
    *,
    ratio: float = 4 / 3,
    coarsest: int = 14,
    temporal_ratio: float = 1.0,
    coarsest_frames: int = 1,
) -> list[tuple[float, float]]:
    """``(temporal scale, spatial scale)`` of every level, finest (1, 1) first.

    The number of levels is ``max(ceil(log(min(H, W) / coarsest) / log(ratio)),
    ceil(log(T / coarsest_frames) / log(temporal_ratio))) + 1`` (the temporal term only when
    ``temporal_ratio > 1``): the pyramid goes on until both the spatial and the temporal minimum
    are reached, as in VGPNN. Level ``i`` has spatial scale ``ratio**-i`` until the shorter side
    reaches ``coarsest`` (the last spatial step is shortened to land on it; later levels keep it)
    and temporal scale ``temporal_ratio**-i``, never below ``coarsest_frames`` frames.
    """
    if ratio <= 1:
        raise ValueError(f"vision_kernels.patchnn: argument 'ratio' must be > 1, got {ratio}")
    if temporal_ratio < 1:
        raise ValueError(f"vision_kernels.patchnn: argument 'temporal_ratio' must be >= 1, got {temporal_ratio}")
    frames, height, width = int(shape[0]), int(shape[1]), int(shape[2])
    side = min(height, width)
    if coarsest < 1:
        raise ValueError(f"vision_kernels.patchnn: argument 'coarsest' must be >= 1, got {coarsest}")
    if coarsest_frames < 1:
        raise ValueError(f"vision_kernels.patchnn: argument 'coarsest_frames' must be >= 1, got {coarsest_frames}")
    spatial_depth = max(0, math.ceil(math.log(side / coarsest) / math.log(ratio) - 1e-9)) if side > coarsest else 0
    temporal_depth = 0
    if temporal_ratio > 1 and frames > coarsest_frames:
        temporal_depth = max(0, math.ceil(math.log(frames / coarsest_frames) / math.log(temporal_ratio) - 1e-9))
    depth = max(spatial_depth, temporal_depth)
    scales: list[tuple[float, float]] = []
    for i in range(depth + 1):
        spatial = ratio**-i if i < spatial_depth else min(1.0, coarsest / side)
        temporal = max(temporal_ratio**-i, min(1.0, coarsest_frames / frames))
        if (
            scales
            and round(side * spatial) == round(side * scales[-1][1])
            and round(frames * temporal) == round(frames * scales[-1][0])
        ):
            scales[-1] = (temporal, spatial)  # the coarsest level rounds to the previous one: merge them
        else:
            scales.append((temporal, spatial))
    return scales


def scaled_shapes(shape: Sequence[int], scales: Sequence[tuple[float, float]]) -> list[tuple[int, int, int]]:
    """``(T, H, W)`` of ``shape`` at each ``(temporal, spatial)`` scale (at least 1 each)."""
    frames, height, width = int(shape[0]), int(shape[1]), int(shape[2])
    return [(max(1, round(frames * t)), max(1, round(height * s)), max(1, round(width * s))) for t, s in scales]


def pyramid_shapes(
    shape: Sequence[int],
    *,
    ratio: float = 4 / 3,
    coarsest: int = 14,
    temporal_ratio: float = 1.0,
    coarsest_frames: int = 1,
) -> list[tuple[int, int, int]]:
    """``(T, H, W)`` of every pyramid level of a ``[T, H, W, ...]`` shape, finest first."""
    scales = level_scales(
        shape, ratio=ratio, coarsest=coarsest, temporal_ratio=temporal_ratio, coarsest_frames=coarsest_frames
    )
    return scaled_shapes(shape, scales)


def _blur_time(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of ``[T, H, W, C]`` along T (reflect padding)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    t, h, w, c = x.shape
    series = x.permute(1, 2, 3, 0).reshape(-1, 1, t)  # [H W C, 1, T]
    pad = min(radius, t - 1)
    padded = F.pad(series, (pad, pad), mode="reflect") if pad > 0 else series
    if pad < radius:
        padded = F.pad(padded, (radius - pad, radius - pad), mode="replicate")
    blurred = F.conv1d(padded, kernel.view(1, 1, -1))
    return blurred.reshape(h, w, c, t).permute(3, 0, 1, 2)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Resize ``[T, H, W, C]`` to ``(T', H', W')``: antialiased bilinear in space, linear in time
    (Gaussian low-pass first when T shrinks). Works on any float dtype and device."""
    frames, height, width = (int(s) for s in size)
    out = x
    if (out.shape[1], out.shape[2]) != (height, width):
        planes = out.permute(0, 3, 1, 2).float()  # [T, C, H, W]
        antialias = height < out.shape[1] or width < out.shape[2]
        planes = F.interpolate(planes, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
        out = planes.permute(0, 2, 3, 1).to(x.dtype)
    if out.shape[0] != frames:
        if frames < out.shape[0]:
            out = _blur_time(out.float(), sigma=max(0.5, (out.shape[0] / frames - 1) / 2)).to(x.dtype)
        series = out.permute(1, 2, 3, 0).reshape(1, -1, out.shape[0]).float()  # [1, H W C, T]
        series = F.interpolate(series, size=frames, mode="linear", align_corners=False)
        out = series.reshape(height, width, x.shape[3], frames).permute(3, 0, 1, 2).to(x.dtype)
    return out.contiguous()


def build_pyramid(x: Tensor, shapes: Sequence[Sequence[int]]) -> list[Tensor]:
    """``x`` resized to every shape (finest first); the level equal to x's shape is x itself."""
    return [x.contiguous() if tuple(x.shape[:3]) == tuple(s) else resize(x, s) for s in shapes]
