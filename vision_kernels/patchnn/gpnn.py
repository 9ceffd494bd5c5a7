"""GPNN: coarse-to-fine patch nearest-neighbour synthesis (Granot et al., "Drop the GAN", CVPR 2022).

Given a source ``x`` (``[T, H, W, C]``; an image is ``T = 1``) and an initial guess at the coarsest
scale, GPNN builds the source pyramid ``x_L`` (coarsest) ... ``x_0 = x`` and, at every level, runs
``iterations`` PNN steps on the current output ``y``::

    Q = patches(y),  K = patches(keys),  V = patches(x_l)
    j(i) = argmin_j  D(Q_i, K_j) / (alpha + min_l D(Q_l, K_j))     (completeness-normalized NN)
    y    = fold(V[j])                                                 (voting: mean of overlaps)

with ``keys`` = the coarser source ``x_{l+1}`` upscaled to level ``l`` (a blurred ``x_l``) on the
first step of a level and ``x_l`` itself afterwards, and ``y`` upscaled from the previous level to
start each level. ``D`` is the mean squared patch difference (pixels in [0, 1]). Applications
(:mod:`vision_kernels.patchnn.apps`) differ only in the initial guess, the output size, and masks.
The pyramid code is written for ``[T, H, W, C]`` with separate spatial and temporal factors, so
VGPNN (videos, 3x7x7 patches) uses the same machinery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .._progress import progress
from ..ops.patch_nn import normalize_patch_size, patch_vote, valid_patch_mask, validate_alpha
from .pyramid import build_pyramid, level_scales, resize, scaled_shapes
from .search import EXACT_WORK_LIMIT, SEARCH_METHODS, resolve_search, search_patches

__all__ = ["GPNNConfig", "INITIAL_GUESSES", "initial_guess", "pnn_step", "synthesize", "as_video", "pyramid_plan"]

INITIAL_GUESSES = ("source", "noise")


@dataclass(frozen=True)
class GPNNConfig:
    """Settings of GPNN; the defaults are the paper's / official code's, except the initial guess
    of random generation (noise alone, see below).

    Attributes:
        patch_size: ``p`` (``p x p`` spatial patches), ``(ph, pw)`` or ``(pt, ph, pw)``. Default 7.
        pyramid_ratio: spatial downscale between levels (4/3).
        coarsest: shorter spatial side at the coarsest level (14 px).
        temporal_ratio: temporal downscale between levels (1: none; videos only).
        coarsest_frames: fewest frames at any level (videos only).
        iterations: PNN steps per level (10).
        coarsest_iterations: PNN steps at the coarsest level (None: ``iterations``). Repeated steps
            at the coarsest level drift toward the source's own layout (the identity match is a
            fixed point that spreads), so fewer steps there keep random samples diverse.
        alpha: completeness weight of the normalized score on the scale of ``D``, the mean squared
            difference of [0, 1] pixels (0.005); ``None`` for plain nearest neighbours.
        noise_std: standard deviation of the noise added to the coarsest initial guess of random
            generation (0.75, one draw per pixel shared by the channels).
        initial_guess: coarsest start of random generation (see :func:`initial_guess`):
            ``"noise"`` (default: the source's mean colour plus noise, i.e. noise alone, as
            Efficient-GPNN's ``init_from="zeros"``) or ``"source"`` (the coarsest source level plus
            noise, the official GPNN code's, and this package's default before issue 15). With
            ``"source"`` many samples are the source itself; see "Why samples collapse" below.
        search: ``"exact"`` (exact kernel), ``"patchmatch"`` (approximate), ``"faiss"``
            (``alpha=None`` only) or ``"auto"`` (exact while a level's brute-force work is within
            ``exact_limit``, else PatchMatch; chosen per level and logged, see
            :func:`vision_kernels.patchnn.search.choose_search`). ``"auto"`` is the recommended
            fast mode: on a 250-px image it searches the three finest levels with PatchMatch, ~6x
            faster than exact, with samples ~2-3 % farther from the source's patches (mean
            nearest-patch distance); PatchMatch on every level loses more (benchmark ``patch_nn``).
        exact_limit: brute-force multiply-adds ``Nq * Nk * n`` up to which ``search="auto"`` is exact.
        patchmatch_iterations: PatchMatch steps per search (warm-started across PNN steps).
        reduction: voting reduction, ``"mean"``, ``"gaussian"`` or ``"median"``.
        progress: show a progress bar (None: the global vision_kernels setting).

    Why samples collapse onto the source (issue 15; figures in ``docs/gpnn_diversity.md``). With the
    ``"source"`` start, seed 0 of astronaut and of chelsea at 128 px came back as the source exactly
    (identity fraction 1, D = 0). The causes, in order of weight:

    * The initial guess. ``x_L + n`` still carries the source's layout: for a query ``x_i + n`` the
      score gap to another key is ``D(x_i, k_j) + 2 <n, x_i - k_j> / n_values``, so the noise only
      moves a query away from its own position where its correlation with ``x_i - k_j`` beats the
      content difference, and a 7x7 patch averages 49 noise draws. Many coarsest queries find their
      own position, these identity patches agree where they overlap, and the identity arrangement is
      a fixed point of the PNN step (a patch at home finds itself at ``D = 0``) that every finer
      level inherits and spreads. Starting from noise alone removes the pull: no sample measured
      (images, 36 to 250 px) had an identity fraction above 0.02.
    * Steps at the coarsest level: each further step moves the output closer to that fixed point
      (4 of 6 samples of 80-px images were copies with 10 steps, none with 1), hence
      ``coarsest_iterations = 1`` in :func:`~vision_kernels.patchnn.generate`.
    * Coarsest size against the patch: at 14 px a 7x7 patch covers half the shorter side, so there
      are only 8 positions per column to re-arrange, and little room to leave the identity (an
      argument; ``coarsest`` was not varied in the measurements).
    * Noise level: a larger ``noise_std`` with the ``"source"`` start lowers the pull (1.5 on
      36-px astronaut: identities at most 0.13 instead of up to 0.73) but keeps some of it.
    * ``alpha`` is on the scale of ``D`` here (mean squared difference), where 0.005 is several
      times a typical nearest ``D`` (~1e-3): the score is close to plain nearest neighbours. The
      official code normalizes the Euclidean distance of the patch vector, ``sqrt(n_values D)``,
      by ``alpha = 0.005`` on that scale, a far stronger completeness term. Completeness does not
      oppose copying (the identity uses every key once); ``alpha`` was left at 0.005.
    """

    patch_size: int | tuple[int, ...] = 7
    pyramid_ratio: float = 4 / 3
    coarsest: int = 14
    temporal_ratio: float = 1.0
    coarsest_frames: int = 1
    iterations: int = 10
    coarsest_iterations: int | None = None
    alpha: float | None = 0.005
    noise_std: float = 0.75
    initial_guess: str = "noise"
    search: str = "exact"
    exact_limit: float = EXACT_WORK_LIMIT
    patchmatch_iterations: int = 6
    reduction: str = "mean"
    progress: bool | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        name = "vision_kernels.patchnn.GPNNConfig"
        normalize_patch_size(self.patch_size, name)
        if self.search not in SEARCH_METHODS:
            raise ValueError(f"{name}: argument 'search' must be one of {SEARCH_METHODS}, got {self.search!r}")
        if self.search == "faiss" and self.alpha is not None:
            raise ValueError(f"{name}: search='faiss' needs alpha=None (FAISS has no normalized score)")
        if self.iterations < 1:
            raise ValueError(f"{name}: argument 'iterations' must be >= 1, got {self.iterations}")
        if self.coarsest_iterations is not None and self.coarsest_iterations < 1:
            raise ValueError(f"{name}: argument 'coarsest_iterations' must be >= 1, got {self.coarsest_iterations}")
        validate_alpha(self.alpha, name)
        if self.initial_guess not in INITIAL_GUESSES:
            raise ValueError(
                f"{name}: argument 'initial_guess' must be one of {INITIAL_GUESSES}, got {self.initial_guess!r}"
            )
        if self.noise_std < 0:
            raise ValueError(f"{name}: argument 'noise_std' must be >= 0, got {self.noise_std}")

    @property
    def patch(self) -> tuple[int, int, int]:
        return normalize_patch_size(self.patch_size, "vision_kernels.patchnn.GPNNConfig")

    def with_(self, **changes: object) -> GPNNConfig:
        """A copy with some settings changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


def as_video(x: Tensor, name: str = "image") -> tuple[Tensor, bool]:
    """``[H, W, C]`` -> ``[1, H, W, C]`` (and whether it was an image); ``[T, H, W, C]`` unchanged."""
    if not isinstance(x, Tensor):
        raise TypeError(f"vision_kernels.patchnn: argument '{name}' must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 3:
        return x[None], True
    if x.dim() == 4:
        return x, False
    raise ValueError(
        f"vision_kernels.patchnn: argument '{name}' must have shape [H, W, C] or [T, H, W, C], got {tuple(x.shape)}"
    )


def pnn_step(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    config: GPNNConfig,
    *,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    seed: int = 0,
    init: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One PNN step: every query patch is replaced by the value patch at its nearest key, then the
    overlapping value patches are voted into a new image. ``keys`` and ``values`` share a shape.

    Returns ``(image, index)``; ``image`` has the shape of ``queries`` (positions no searched query
    patch covers hold 0), ``index`` the chosen flat key index per query position (-1 if masked).
    """
    found = search_patches(
        queries,
        keys,
        config.patch,
        method=config.search,
        alpha=config.alpha,
        query_mask=query_mask,
        key_mask=key_mask,
        seed=seed,
        init=init,
        patchmatch_iterations=config.patchmatch_iterations,
        exact_limit=config.exact_limit,
    )
    return patch_vote(values, found.index, config.patch, reduction=config.reduction), found.index


def _fit_patch(config: GPNNConfig, shapes: Sequence[Sequence[int]]) -> None:
    pt, ph, pw = config.patch
    small = [s for s in shapes if s[0] < pt or s[1] < ph or s[2] < pw]
    if small:
        raise ValueError(
            f"vision_kernels.patchnn: patch_size {config.patch} does not fit in pyramid level {tuple(small[-1])}; "
            "raise 'coarsest' or use smaller patches"
        )


def pyramid_plan(
    source_shape: Sequence[int], output_shape: Sequence[int], config: GPNNConfig
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """``(source shapes, output shapes)`` of every level, finest first.

    Both pyramids use the same per-level scales, computed from the smaller of the two shapes so
    that the coarsest level of each has its shorter side at least ``config.coarsest``.
    """
    smallest = [min(int(a), int(b)) for a, b in zip(source_shape[:3], output_shape[:3], strict=True)]
    scales = level_scales(
        smallest,
        ratio=config.pyramid_ratio,
        coarsest=config.coarsest,
        temporal_ratio=config.temporal_ratio,
        coarsest_frames=config.coarsest_frames,
    )
    return scaled_shapes(source_shape, scales), scaled_shapes(output_shape, scales)


def synthesize(
    source: Tensor,
    coarse_guess: Tensor,
    output_shape: Sequence[int],
    config: GPNNConfig,
    *,
    hole: Tensor | None = None,
    seed: int = 0,
    key_masks: Sequence[Tensor] | None = None,
    guides: tuple[Tensor, Tensor] | None = None,
    guide_levels: int | None = None,
    guide_only_start: bool = False,
    desc: str = "GPNN",
) -> Tensor:
    """Run GPNN from ``coarse_guess`` (the output's coarsest level) to an output of ``output_shape``.

    Args:
        source: ``[T, H, W, C]`` source (keys and values come from its pyramid).
        coarse_guess: ``[T, H, W, C]`` initial output at the coarsest level (resized to the coarsest
            output shape if it differs).
        output_shape: ``(T, H, W)`` of the output; the output pyramid uses the source's level scales.
        config: :class:`GPNNConfig`.
        hole: optional bool ``[T, H, W]`` over the source (inpainting; output shape = source shape):
            only patches touching the hole are searched, keys never overlap it, and pixels outside it
            keep the source's values at every level.
        seed: seed of the PatchMatch search.
        key_masks: optional per-level bool masks over the key patch grids (finest first), e.g. the
            valid regions of a padded collage stack.
        guides: optional ``(output guide [T, H, W, G] of output_shape, source guide [T, H, W, G] of the
            source's shape)``: extra channels appended to the queries and the keys (never to the
            values) so that matches also agree on them, e.g. a motion channel for video analogies.
            Their scale sets their weight in ``D`` (the mean over all ``C + G`` channels).
        guide_levels: number of coarsest levels that use ``guides`` (None: all).
        guide_only_start: at the coarsest level's first step, match on the guides alone (the output
            starts as pure guide, as VGPNN's analogies do).
        desc: label of the progress bar.

    Returns:
        ``[T, H, W, C]`` output.
    """
    source_shapes, output_shapes = pyramid_plan(source.shape, output_shape, config)
    _fit_patch(config, source_shapes + output_shapes)
    sources = build_pyramid(source, source_shapes)  # finest first
    holes = None
    if hole is not None:
        if tuple(output_shape) != tuple(source.shape[:3]):
            raise ValueError("vision_kernels.patchnn: inpainting keeps the source's shape")
        holes = [resize(hole.float()[..., None], s)[..., 0] > 0 for s in source_shapes]
    y = resize(coarse_guess, output_shapes[-1]) if tuple(coarse_guess.shape[:3]) != output_shapes[-1] else coarse_guess
    levels = len(source_shapes)
    guided = set(range(levels) if guide_levels is None else range(max(0, levels - guide_levels), levels))
    coarsest_steps = config.iterations if config.coarsest_iterations is None else config.coarsest_iterations
    steps = [
        (level, step)
        for level in reversed(range(levels))
        for step in range(coarsest_steps if level == levels - 1 else config.iterations)
    ]
    index = None
    level_config = config
    guide_out = guide_src = None
    for level, step in progress(steps, desc=desc, enabled=config.progress):
        values = sources[level]
        if step == 0:
            if level < levels - 1:
                y = resize(y, output_shapes[level])
                keys = resize(sources[level + 1], source_shapes[level])  # blurred: upscaled coarser source
            else:
                keys = values
            index = None
            if guides is not None and level in guided:
                guide_out = resize(guides[0], output_shapes[level])  # [T, H, W, G]
                guide_src = resize(guides[1], source_shapes[level])
            else:
                guide_out = guide_src = None
        else:
            keys = values
        query_mask = key_mask = None
        if holes is not None:
            known = ~holes[level]
            y = torch.where(known[..., None], values, y)
            key_mask = valid_patch_mask(known, config.patch)
            query_mask = ~valid_patch_mask(known, config.patch)  # patches touching the hole
        if key_masks is not None:
            key_mask = key_masks[level] if key_mask is None else key_mask & key_masks[level]
        queries = y
        if guide_out is not None and guide_src is not None:
            start = guide_only_start and level == levels - 1 and step == 0
            queries = torch.cat([torch.zeros_like(y) if start else y, guide_out.to(y)], dim=-1)
            keys = torch.cat([torch.zeros_like(keys) if start else keys, guide_src.to(keys)], dim=-1)
        if step == 0:
            method = resolve_search(
                config.search,
                queries,
                keys,
                config.patch,
                alpha=config.alpha,
                query_mask=query_mask,
                exact_limit=config.exact_limit,
            )
            level_config = config.with_(search=method)
        voted, index = pnn_step(
            queries, keys, values, level_config, query_mask=query_mask, key_mask=key_mask, seed=seed + step, init=index
        )
        y = voted if holes is None else torch.where(holes[level][..., None], voted, values)
    return y


def initial_guess(
    source: Tensor, output_shape: Sequence[int], config: GPNNConfig, *, seed: int, per_channel: bool = False
) -> Tensor:
    """The coarsest output level of random generation, ``[T_L, H_L, W_L, C]``::

        "source":  y_L = resize(x_L, output's coarsest shape) + noise_std * n
        "noise":   y_L = mean colour of x                      + noise_std * n

    with ``n ~ N(0, 1)`` drawn from ``seed`` on the CPU, one value per pixel shared by the channels
    (``per_channel``: one per pixel and channel). ``source`` is ``[T, H, W, C]``.
    """
    source_shapes, output_shapes = pyramid_plan(source.shape, output_shape, config)
    shape = output_shapes[-1]
    if config.initial_guess == "source":
        base = resize(resize(source, source_shapes[-1]), shape)  # [T_L, H_L, W_L, C]
    else:
        base = source.mean(dim=(0, 1, 2)).expand(*shape, source.shape[-1])  # [T_L, H_L, W_L, C]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn((*shape, source.shape[-1] if per_channel else 1), generator=generator)
    return (base + config.noise_std * noise.to(base)).contiguous()
