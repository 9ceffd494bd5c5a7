"""Synthetic sample videos for VGPNN's tests, demo and benchmarks: moving shapes on a texture."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["moving_shapes"]


def _texture(height: int, width: int, generator: torch.Generator, grain: float = 2.0) -> Tensor:
    """A stationary colourful texture ``[H, W, 3]`` in [0.1, 0.9]: white noise blurred by a Gaussian of
    ``grain`` px (short-range structure only, so rearranged pieces of it look like it)."""
    noise = torch.randn(1, 3, height, width, generator=generator)
    radius = max(1, math.ceil(3 * grain))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * grain**2))
    kernel = kernel / kernel.sum()
    row = kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    column = kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1)
    planes = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="circular"), row, groups=3)
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="circular"), column, groups=3)
    planes = planes / planes.std()
    return (0.5 + 0.16 * planes[0].permute(1, 2, 0)).clamp(0.1, 0.9)


def moving_shapes(
    frames: int = 12, height: int = 40, width: int = 56, *, seed: int = 0, shapes: int = 3, speed: float = 2.0
) -> Tensor:
    """A float32 ``[T, H, W, 3]`` video in [0, 1]: ``shapes`` flat-coloured discs and squares moving
    at constant velocity (``speed`` px/frame, bouncing off the borders) over a static texture.

    Deterministic for a given ``seed``; frame-to-frame change is confined to the moving shapes.
    """
    generator = torch.Generator().manual_seed(int(seed))
    background = _texture(height, width, generator)  # [H, W, 3]
    video = background.expand(frames, height, width, 3).clone()  # [T, H, W, 3]
    ys = torch.arange(height, dtype=torch.float32)[:, None]
    xs = torch.arange(width, dtype=torch.float32)[None, :]
    palette = torch.tensor([[0.95, 0.15, 0.1], [0.1, 0.2, 0.95], [0.95, 0.9, 0.1], [0.1, 0.85, 0.2]])
    for s in range(shapes):
        radius = max(3.0, min(height, width) / 8)
        cy, cx = (
            radius + torch.rand(2, generator=generator) * torch.tensor([height - 2 * radius, width - 2 * radius])
        ).tolist()
        angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
        vy, vx = speed * math.sin(angle), speed * math.cos(angle)
        color = palette[s % len(palette)]
        for t in range(frames):
            if s % 2 == 0:
                inside = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
            else:
                inside = ((ys - cy).abs() <= radius * 0.85) & ((xs - cx).abs() <= radius * 0.85)
            video[t][inside] = color
            cy, cx = cy + vy, cx + vx
            if not radius <= cy <= height - radius:
                vy, cy = -vy, min(max(cy, radius), height - radius)
            if not radius <= cx <= width - radius:
                vx, cx = -vx, min(max(cx, radius), width - radius)
    return video
