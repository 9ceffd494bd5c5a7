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
    """Settings of GPNN; the defaults are the paper's / official code's, except the start of random
    generation (noise alone, see below) and one PNN step at the coarsest level.

    Attributes:
        patch_size: ``p`` (``p x p`` spatial patches), ``(ph, pw)`` or ``(pt, ph, pw)``. Default 7.
        pyramid_ratio: spatial downscale between levels (4/3).
        coarsest: shorter spatial side at the coarsest level (14 px).
        temporal_ratio: temporal downscale between levels (1: none; videos only).
        coarsest_frames: fewest frames at any level (videos only).
        iterations: PNN steps per level (10).
        coarsest_iterations: PNN steps at the coarsest level (None: ``iterations``;
            :func:`~vision_kernels.patchnn.generate` uses 1). Repeated steps at the coarsest level
            drift toward the source's own layout (the identity match is a fixed point that spreads),
            so fewer steps there keep random samples diverse.
        alpha: completeness weight of the normalized score on the scale of ``D``, the mean squared
            difference of [0, 1] pixels (0.005); ``None`` for plain nearest neighbours.
        noise_std: standard deviation of the noise added to the coarsest initial guess of random
            generation (0.75, the official code's; one draw per pixel shared by the channels).
        initial_guess: coarsest start of random generation (see :func:`initial_guess`):
            ``"noise"`` (default: the source's mean colour plus noise, i.e. noise alone, as
            Efficient-GPNN's ``init_from="zeros"``) or ``"source"`` (the coarsest source level plus
            noise, the paper's and the official code's, which with noise 0.75 often returns the
            source itself; see below).
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
    official settings (source start, noise 0.75), seed 0 of astronaut and of chelsea at 128 px came
    back as the source exactly (identity fraction 1, D = 0). The causes, in order of weight:

    * The noise against the patch distances. For a query ``x_i + s n`` (``n`` standard normal,
      ``x_i`` the source patch at its own position) the score gap to another key ``k_j`` is, in
      patch sums, ``|d_j|^2 + 2 s <n, d_j>`` with ``d_j = x_i - k_j``; ``<n, d_j>`` is normal with
      standard deviation ~``|d_j|``, so ``k_j`` beats the identity with probability
      ``Phi(-|d_j| / (2 s))``. A 7x7 patch sums 49 noise draws, and where every other key differs
      by much more than ``2 s`` (textured or unique patches) the query stays at home. These identity
      patches agree where they overlap, and the identity arrangement is a fixed point of the PNN
      step (a patch at home finds itself at ``D = 0``) that every finer level inherits and spreads.
      With ``s = 0.75`` that keeps whole images. With ``s = 1.5`` most samples leave home, but coffee
      seed 2 at 128 px was still the source itself; with ``s = 2.5`` the same seed kept 0.08 of its
      patches at home and with ``s = 3`` none, at 1.5x the patch distance of 2.5. With 2.5 the home
      match loses to the many keys within ``|d| ~ 2 s`` while the source term ``|d_j|^2`` still
      favours keys that look like the query, so the coarse layout is a plausible one (sky above
      ground, the cup's colours together). But at 128 px the patch distance of noise 2.5 on coffee
      was 2.6x the official samples' (seeds 2-3), no better than noise alone, with less diversity.
    * The start itself. Noise alone (``"noise"``) never copies (identity <= 0.03 everywhere
      measured), but its queries ``m + s n`` are all equally far from the content, so the first
      matches favour flat, mean-coloured patches and the layout has no large-scale structure: its
      mean nearest-patch distance was 2.5x the official samples' on coffee at 128 px and 5-8x the
      ``"source"`` start with noise 1.5 at 64 px.
    * Steps at the coarsest level: each further step moves the output closer to the fixed point
      (4 of 6 samples of 80-px images were copies with 10 steps, none with 1), hence one step in
      :func:`~vision_kernels.patchnn.generate` (Efficient-GPNN makes the same choice).
    * Coarsest size against the patch: at 14 px a 7x7 patch covers half the shorter side, so there
      are only 8 positions per column to re-arrange, and the layout has little room (an argument;
      ``coarsest`` was not varied in the measurements).
    * ``alpha`` is on the scale of ``D`` here (mean squared difference), where 0.005 is several
      times a typical nearest ``D`` (~1e-3): the score is close to plain nearest neighbours. The
      official code divides the patch sum of squares by ``alpha = 0.005`` plus the key's best sum,
      i.e. ``alpha = 0.005 / 147 = 3.4e-5`` here, a far stronger completeness term. Completeness
      does not oppose copying (the identity uses every key once), and on 64-px samples the official
      scale raised D 2-4x; ``alpha`` stays at 0.005.
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


@dataclass(frozen=True)
class _Level:
    """What the PNN steps of one pyramid level read (fixed for all its steps)."""

    values: Tensor  # [T, H, W, C] source at this level
    first_keys: Tensor  # [T, H, W, C] keys of the first step: the coarser source upscaled (a blurred x_l)
    config: GPNNConfig  # with this level's search backend (search="auto" chooses per level)
    hole: Tensor | None = None  # bool [T, H, W] over the output, True = to fill (inpainting)
    query_mask: Tensor | None = None  # bool query patch grid: the patches searched
    key_mask: Tensor | None = None  # bool key patch grid: the patches allowed as matches
    guide_out: Tensor | None = None  # [T, H, W, G] guide channels appended to the queries
    guide_src: Tensor | None = None  # [T, H, W, G] guide channels appended to the keys
    guide_only_first: bool = False  # the first step matches on the guides alone


@dataclass(frozen=True)
class _Plan:
    """The fixed inputs of one :func:`synthesize` run, finest level first."""

    sources: list[Tensor]  # source pyramid, [T_l, H_l, W_l, C] each
    source_shapes: list[tuple[int, int, int]]
    output_shapes: list[tuple[int, int, int]]
    holes: list[Tensor] | None  # bool [T_l, H_l, W_l] per level
    key_masks: Sequence[Tensor] | None
    guides: tuple[Tensor, Tensor] | None
    guided: frozenset[int]  # levels that use the guides
    guide_only_start: bool

    def level(self, level: int, config: GPNNConfig) -> _Level:
        """The tensors and the search backend of pyramid level ``level``."""
        values = self.sources[level]
        coarsest = level == len(self.sources) - 1
        first_keys = values if coarsest else resize(self.sources[level + 1], self.source_shapes[level])
        hole = query_mask = key_mask = None
        if self.holes is not None:
            hole = self.holes[level]
            key_mask = valid_patch_mask(~hole, config.patch)
            query_mask = ~key_mask  # patches touching the hole
        if self.key_masks is not None:
            key_mask = self.key_masks[level] if key_mask is None else key_mask & self.key_masks[level]
        guide_out = guide_src = None
        if self.guides is not None and level in self.guided:
            guide_out = resize(self.guides[0], self.output_shapes[level])  # [T, H, W, G]
            guide_src = resize(self.guides[1], self.source_shapes[level])
        channels = values.shape[-1] + (0 if guide_out is None else guide_out.shape[-1])
        method = resolve_search(
            config.search,
            (*self.output_shapes[level], channels),
            (*self.source_shapes[level], channels),
            config.patch,
            alpha=config.alpha,
            query_mask=query_mask,
            exact_limit=config.exact_limit,
        )
        level_config = config.with_(search=method)
        return _Level(
            values=values,
            first_keys=first_keys,
            config=level_config,
            hole=hole,
            query_mask=query_mask,
            key_mask=key_mask,
            guide_out=guide_out,
            guide_src=guide_src,
            guide_only_first=self.guide_only_start and coarsest,
        )


def _plan(
    source: Tensor,
    output_shape: Sequence[int],
    config: GPNNConfig,
    hole: Tensor | None,
    key_masks: Sequence[Tensor] | None,
    guides: tuple[Tensor, Tensor] | None,
    guide_levels: int | None,
    guide_only_start: bool,
) -> _Plan:
    source_shapes, output_shapes = pyramid_plan(source.shape, output_shape, config)
    _fit_patch(config, source_shapes + output_shapes)
    holes = None
    if hole is not None:
        if tuple(output_shape) != tuple(source.shape[:3]):
            raise ValueError("vision_kernels.patchnn: inpainting keeps the source's shape")
        holes = [resize(hole.float()[..., None], s)[..., 0] > 0 for s in source_shapes]
    levels = len(source_shapes)
    guided = frozenset(range(levels) if guide_levels is None else range(max(0, levels - guide_levels), levels))
    sources = build_pyramid(source, source_shapes)
    return _Plan(sources, source_shapes, output_shapes, holes, key_masks, guides, guided, guide_only_start)


def _schedule(levels: int, config: GPNNConfig) -> list[tuple[int, int]]:
    """``(level, step)`` of every PNN step, coarsest level first."""
    coarsest_steps = config.iterations if config.coarsest_iterations is None else config.coarsest_iterations
    return [
        (level, step)
        for level in reversed(range(levels))
        for step in range(coarsest_steps if level == levels - 1 else config.iterations)
    ]


def _level_step(y: Tensor, level: _Level, step: int, seed: int, index: Tensor | None) -> tuple[Tensor, Tensor]:
    """One PNN step at ``level`` on the current output ``y [T, H, W, C]``: ``(new y, chosen key indices)``."""
    keys = level.first_keys if step == 0 else level.values
    if level.hole is not None:
        y = torch.where(level.hole[..., None], y, level.values)  # pixels outside the hole are the source's
    queries = y
    if level.guide_out is not None and level.guide_src is not None:
        start = level.guide_only_first and step == 0
        queries = torch.cat([torch.zeros_like(y) if start else y, level.guide_out.to(y)], dim=-1)
        keys = torch.cat([torch.zeros_like(keys) if start else keys, level.guide_src.to(keys)], dim=-1)
    voted, index = pnn_step(
        queries,
        keys,
        level.values,
        level.config,
        query_mask=level.query_mask,
        key_mask=level.key_mask,
        seed=seed + step,
        init=index,
    )
    return (voted if level.hole is None else torch.where(level.hole[..., None], voted, level.values)), index


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
    plan = _plan(source, output_shape, config, hole, key_masks, guides, guide_levels, guide_only_start)
    y = coarse_guess
    level = None
    index = None
    for number, step in progress(_schedule(len(plan.sources), config), desc=desc, enabled=config.progress):
        if step == 0:
            y = resize(y, plan.output_shapes[number]) if tuple(y.shape[:3]) != plan.output_shapes[number] else y
            level, index = plan.level(number, config), None
        assert level is not None
        y, index = _level_step(y, level, step, seed, index)
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
