"""The misalignment claim of Shocher et al. (2020), measured.

A 3x3 / stride 2 / padding 1 convolution centres output ``k`` on input ``2k``, while the centred grid of a 2x
downscale (docs/DESIGN.md 2.4: ``x(k) = k / s + (n_in - 1) / 2 - (n_out - 1) / (2 s)`` = ``2k + 1/2``) puts it at
``2k + 1/2``: content drifts by half an input pixel per downscaling layer, ``(2^L - 1) / 2`` original pixels
after ``L`` layers. A CC layer resamples on the centred grid and does not drift.
:func:`downscale_drift` downscales a symmetric blob centred on the image centre through both stacks and
measures where it ends up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .cc_conv import CCConv2d, InterpolationFilter

__all__ = ["DriftResult", "centred_blob", "centroid", "downscale_drift"]


def strided_shift(layers: int) -> float:
    """Shift, in input pixels, of a stack of ``layers`` 3x3 / stride 2 / padding 1 convolutions:
    ``(2**layers - 1) / 2`` (output k of such a layer is centred on input 2k, the centred grid of a 2x
    downscale puts it at 2k + 1/2, so layer l moves content by ``2**l / 2`` original pixels)."""
    return (2.0**layers - 1) / 2


def centred_blob(size: int, sigma: float = 4.0) -> Tensor:
    """``[1, 1, size, size]`` float64 Gaussian centred on the image centre ``((size - 1) / 2, (size - 1) / 2)``."""
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(coordinates**2) / (2 * sigma**2))
    return (profile[:, None] * profile[None, :])[None, None]


def centroid(image: Tensor) -> tuple[float, float]:
    """Intensity centroid (row, column) of a ``[1, 1, H, W]`` image in its own pixel coordinates."""
    mass = image[0, 0].clamp_min(0)
    rows = torch.arange(mass.shape[0], dtype=mass.dtype)
    cols = torch.arange(mass.shape[1], dtype=mass.dtype)
    total = mass.sum()
    return float((mass.sum(1) * rows).sum() / total), float((mass.sum(0) * cols).sum() / total)


@dataclass
class DriftResult:
    """Both stacks' outputs and the blob's displacement from the output centre, in original pixels."""

    image: Tensor
    strided: Tensor
    centred: Tensor
    strided_shift: tuple[float, float]
    cc_shift: tuple[float, float]
    predicted_strided_shift: float


@torch.no_grad()
def downscale_drift(layers: int = 3, size: int = 64, sigma: float = 4.0) -> DriftResult:
    """Downscale :func:`centred_blob` ``layers`` times by 2 with strided convolutions (3x3 binomial, stride 2,
    padding 1) and with CC layers at scale 1/2 (bicubic filter, antialiased, support 4: symmetric windows)."""
    image = centred_blob(size, sigma)
    binomial = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    kernel = (binomial[:, None] * binomial[None, :] / 16)[None, None]
    layer = CCConv2d(1, 1, 4, bias=False, filter=InterpolationFilter(1, (4, 4), learned=False)).double()
    strided, centred = image, image
    for _ in range(layers):
        strided = F.conv2d(strided, kernel, stride=2, padding=1)
        centred = layer(centred, scale=0.5)
    centre = (centred.shape[-1] - 1) / 2
    factor = 2**layers

    def shift(t: Tensor) -> tuple[float, float]:
        row, col = centroid(t)
        return (row - centre) * factor, (col - centre) * factor

    predicted = (2**layers - 1) / 2  # half an input pixel per layer: 2**l / 2 original pixels at layer l
    return DriftResult(image, strided, centred, shift(strided), shift(centred), predicted)
