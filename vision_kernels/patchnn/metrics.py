"""Quality measures of patch-based synthesis."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..ops.patch_nn import patch_nn
from .gpnn import as_video

__all__ = ["mean_patch_distance"]


def mean_patch_distance(output: Tensor, source: Tensor, patch_size: int | Sequence[int] = 7) -> float:
    """Mean over the output's patches of the distance ``D`` (mean squared difference of [0, 1] pixels)
    to their exact nearest patch in ``source``: how well every output patch is explained by the source
    (0 when the output is made of source patches only)."""
    out, _ = as_video(output, "output")
    src, _ = as_video(source, "source")
    return float(patch_nn(out.float(), src.float(), patch_size).distance.mean())
