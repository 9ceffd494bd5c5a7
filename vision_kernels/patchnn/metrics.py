"""Quality and diversity measures of patch-based synthesis (GPNN, VGPNN).

Three numbers describe a set of random samples ``y_1 .. y_N`` of a source ``x`` (all ``[T, H, W, C]``
or ``[H, W, C]``, pixels in [0, 1]; ``D`` is the mean squared difference over a patch's values):

* coherence, :func:`mean_patch_distance`: ``mean_i min_j D(Q_i, K_j)`` over the output's patches
  ``Q_i`` and the source's patches ``K_j``; 0 when the output is made of source patches only.
* copying, :func:`identity_fraction`: the share of output patches whose nearest source patch is the
  one at the same relative position, ``mean_i [D(Q_i, K_{pi(i)}) <= min_j D(Q_i, K_j)]`` with
  ``pi(i)`` the source grid position at the same fraction of the grid as ``i`` (ties count as
  identity, so flat regions of an exact copy count too). The source itself scores 1; a sample that
  re-arranges the source scores near 0.
* diversity, :func:`diversity`: as in SinGAN (Shaham et al., ICCV 2019), the per-pixel standard
  deviation across the samples, averaged over pixels and channels, divided by the source's standard
  deviation, ``mean_p std_n(y_n[p]) / std_p(x[p])`` (population standard deviations). Copies of the
  source score 0.

:func:`sample_metrics` returns the first two from one exact search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ..ops.patch_nn import normalize_patch_size, patch_grid_shape, patch_nn
from .gpnn import as_video

__all__ = ["SampleMetrics", "mean_patch_distance", "identity_fraction", "sample_metrics", "diversity"]


class SampleMetrics(NamedTuple):
    """Coherence and copying of one sample: see :mod:`vision_kernels.patchnn.metrics`."""

    patch_distance: float
    identity_fraction: float


def _pair(output: Tensor, source: Tensor, patch_size: int | Sequence[int], function: str) -> tuple:
    out, _ = as_video(output, "output")
    src, _ = as_video(source, "source")
    patch = normalize_patch_size(patch_size, f"vision_kernels.patchnn.{function}")
    if out.shape[-1] != src.shape[-1]:
        raise ValueError(
            f"vision_kernels.patchnn.{function}: 'output' and 'source' must have the same channels, got "
            f"{out.shape[-1]} and {src.shape[-1]}"
        )
    return out.float(), src.float(), patch


def _same_position_distance(out: Tensor, src: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """``D(Q_i, K_{pi(i)})`` over the output's patch grid, ``pi`` mapping grid fractions to grid fractions."""
    grid_q, grid_k = patch_grid_shape(out.shape, patch), patch_grid_shape(src.shape, patch)
    axes = []
    for nq, nk in zip(grid_q, grid_k, strict=True):
        steps = torch.arange(nq, dtype=torch.float64)
        axes.append((steps * ((nk - 1) / max(1, nq - 1))).round().long() if nq > 1 else torch.zeros(1).long())
    pt, ph, pw = patch
    q = out.double().unfold(0, pt, 1).unfold(1, ph, 1).unfold(2, pw, 1)  # [Tq', Hq', Wq', C, pt, ph, pw]
    k = src.double().unfold(0, pt, 1).unfold(1, ph, 1).unfold(2, pw, 1)  # [Tk', Hk', Wk', C, pt, ph, pw]
    t, h, w = torch.meshgrid(*[a.to(src.device) for a in axes], indexing="ij")  # [Tq', Hq', Wq'] each
    out_d = torch.empty(grid_q, dtype=torch.float64, device=out.device)  # [Tq', Hq', Wq']
    rows = max(1, 2**20 // max(1, grid_q[2] * q[0, 0, 0].numel()))  # ~8 MB temporaries
    for frame in range(grid_q[0]):
        for r in range(0, grid_q[1], rows):
            s = slice(r, r + rows)
            diff = q[frame, s] - k[t[frame, s], h[frame, s], w[frame, s]]  # [rows, Wq', C, pt, ph, pw]
            out_d[frame, s] = diff.square().mean(dim=(-4, -3, -2, -1))
    return out_d


def sample_metrics(output: Tensor, source: Tensor, patch_size: int | Sequence[int] = 7) -> SampleMetrics:
    """``(mean_patch_distance, identity_fraction)`` of ``output`` against ``source`` from one exact
    nearest-neighbour search (``D``: mean squared difference of [0, 1] pixels over a patch)."""
    return _sample_metrics(output, source, patch_size, "sample_metrics")


def _sample_metrics(output: Tensor, source: Tensor, patch_size: int | Sequence[int], function: str) -> SampleMetrics:
    out, src, patch = _pair(output, source, patch_size, function)
    nearest = patch_nn(out, src, patch).distance.double()  # [Tq', Hq', Wq']
    same = _same_position_distance(out, src, patch)
    identity = same <= nearest * (1 + 1e-6) + 1e-12
    return SampleMetrics(float(nearest.mean()), float(identity.double().mean()))


def mean_patch_distance(output: Tensor, source: Tensor, patch_size: int | Sequence[int] = 7) -> float:
    """Mean over the output's patches of the distance ``D`` (mean squared difference of [0, 1] pixels)
    to their exact nearest patch in ``source``: how well every output patch is explained by the source
    (0 when the output is made of source patches only)."""
    out, src, patch = _pair(output, source, patch_size, "mean_patch_distance")
    return float(patch_nn(out, src, patch).distance.mean())


def identity_fraction(output: Tensor, source: Tensor, patch_size: int | Sequence[int] = 7) -> float:
    """Share of the output's patches whose nearest source patch is the one at the same relative
    position of the patch grid (ties included): 1 for the source itself, near 0 for a re-arrangement.
    Output and source may differ in size (positions are matched as fractions of each grid)."""
    return _sample_metrics(output, source, patch_size, "identity_fraction").identity_fraction


def diversity(samples: Sequence[Tensor], source: Tensor) -> float:
    """SinGAN's diversity: ``mean over pixels and channels of std_n(samples[n]) / std(source)``.

    Args:
        samples: at least 2 tensors of one shape (``[H, W, C]`` or ``[T, H, W, C]``), in [0, 1].
        source: the image or video they were generated from (any size; only its standard deviation,
            over all pixels and channels, is used).

    Standard deviations are population ones (divided by ``N``, not ``N - 1``).
    """
    function = "vision_kernels.patchnn.diversity"
    if len(samples) < 2:
        raise ValueError(f"{function}: argument 'samples' must hold at least 2 tensors, got {len(samples)}")
    shapes = {tuple(s.shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"{function}: argument 'samples' must share one shape, got {sorted(shapes)}")
    stack = torch.stack([s.double() for s in samples])  # [N, ...]
    spread = float(stack.std(dim=0, correction=0).mean())
    scale = float(source.double().std(correction=0))
    if scale == 0:
        raise ValueError(f"{function}: argument 'source' is constant (standard deviation 0)")
    return spread / scale
