"""GPNN applications: random generation, retargeting, structural analogies, inpainting, collage and
editing. Each takes and returns float ``[H, W, C]`` images in [0, 1] (``[T, H, W, C]`` videos work
too where the operation makes sense) and differs from the others only in GPNN's initial guess,
output size and masks (see :func:`vision_kernels.patchnn.gpnn.synthesize`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..ops.patch_nn import valid_patch_mask
from .gpnn import GPNNConfig, as_video, initial_guess, pyramid_plan, synthesize
from .pyramid import resize

__all__ = ["generate", "retarget", "analogy", "inpaint", "collage", "edit"]

_DEFAULT = GPNNConfig()


def _coarsest(source_shape: Sequence[int], output_shape: Sequence[int], config: GPNNConfig) -> tuple:
    """(source, output) shapes at the coarsest level (see :func:`pyramid_plan`)."""
    sources, outputs = pyramid_plan(source_shape, output_shape, config)
    return sources[-1], outputs[-1]


def _finish(y: Tensor, image: bool) -> Tensor:
    y = y.clamp(0.0, 1.0)
    return y[0] if image else y


def generate(
    source: Tensor, *, seed: int = 0, config: GPNNConfig = _DEFAULT, size: Sequence[int] | None = None
) -> Tensor:
    """Random sample from a single image: GPNN from a noisy start at the coarsest level.

    ``y_L = mean colour of x + n`` (``config.initial_guess = "noise"``, the default) or
    ``y_L = x_L + n`` (``"source"``: the coarsest source level resized to the output's coarsest
    shape, the official code's start, which with its noise 0.75 often returns the source itself:
    see :class:`~vision_kernels.patchnn.GPNNConfig`), with ``n ~ N(0, noise_std^2)`` per pixel
    (shared by channels), drawn from ``seed``. ``size`` (``(H, W)``, or ``(T, H, W)`` for videos)
    gives a sample of another size. Measure samples with :mod:`vision_kernels.patchnn.metrics`.

    Unless ``config.coarsest_iterations`` is set, one PNN step is run at the coarsest level (the
    paper runs ``iterations`` there too): repeated steps pull the noisy start back to the source's
    own layout, whose identity match is a fixed point that then spreads to every finer level (4
    of 6 samples of 80-px images were the source itself with 10 steps, none with 1). Efficient-GPNN
    (by the GPDM authors) makes the same choice.
    """
    if config.coarsest_iterations is None:
        config = config.with_(coarsest_iterations=1)
    x, image = as_video(source, "source")
    output_shape = tuple(x.shape[:3]) if size is None else _output_shape(x, size)
    coarse = initial_guess(x, output_shape, config, seed=seed)
    return _finish(synthesize(x, coarse, output_shape, config, seed=seed), image)


def _output_shape(x: Tensor, size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        size = (x.shape[0], *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"vision_kernels.patchnn: argument 'size' must be (H, W) or (T, H, W) > 0, got {size}")
    return size  # type: ignore[return-value]


def retarget(source: Tensor, size: Sequence[int], *, config: GPNNConfig = _DEFAULT, seed: int = 0) -> Tensor:
    """Retarget to ``size`` (``(H, W)`` or ``(T, H, W)``) keeping the source's patches at every scale.

    The coarsest initial guess is the coarsest source level resized to the target's coarsest shape
    (no noise); GPNN then fills in details while keeping patch statistics (no stretching).
    """
    x, image = as_video(source, "source")
    output_shape = _output_shape(x, size)
    source_coarse, output_coarse = _coarsest(x.shape, output_shape, config)
    coarse = resize(resize(x, source_coarse), output_coarse)
    return _finish(synthesize(x, coarse, output_shape, config, seed=seed), image)


def analogy(
    content: Tensor, structure: Tensor, *, config: GPNNConfig = _DEFAULT, seed: int = 0, noise_std: float = 0.0
) -> Tensor:
    """Structural analogy: the layout of ``structure`` drawn with the patches of ``content``.

    The coarsest initial guess is ``structure`` at the coarsest scale (plus optional noise); all keys
    and values come from ``content``. The output has the structure image's size.
    """
    return _guided(content, structure, config, seed, noise_std, ("content", "structure"))


def _guided(
    source: Tensor, guide: Tensor, config: GPNNConfig, seed: int, noise_std: float, names: tuple[str, str]
) -> Tensor:
    """GPNN from ``guide`` at the coarsest scale (plus optional noise) with ``source``'s patches."""
    x, image = as_video(source, names[0])
    g, _ = as_video(guide, names[1])
    if x.shape[-1] != g.shape[-1]:
        raise ValueError(
            f"vision_kernels.patchnn: '{names[0]}' and '{names[1]}' must have the same channels, got "
            f"{x.shape[-1]} and {g.shape[-1]}"
        )
    output_shape = tuple(g.shape[:3])
    coarse = resize(g, _coarsest(x.shape, output_shape, config)[1])
    if noise_std > 0:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        coarse = coarse + noise_std * torch.randn((*coarse.shape[:3], 1), generator=generator).to(coarse)
    return _finish(synthesize(x, coarse, output_shape, config, seed=seed), image)


def inpaint(
    source: Tensor, hole: Tensor, *, config: GPNNConfig | None = None, seed: int = 0, fit_coarsest: bool = True
) -> Tensor:
    """Fill ``hole`` (bool ``[H, W]`` / ``[T, H, W]``, True = missing) from the rest of the image.

    Only patches touching the hole are searched, keys never overlap it, and pixels outside it are
    returned unchanged. ``config`` defaults to ``alpha = 1`` (the official inpainting setting: little
    pressure to use every patch); with ``fit_coarsest`` the coarsest level is raised so that the hole
    spans about one patch there (as the official code does), which keeps the hole's context.
    """
    x, image = as_video(source, "source")
    h = hole[None] if hole.dim() == 2 else hole
    if tuple(h.shape) != tuple(x.shape[:3]):
        raise ValueError(
            f"vision_kernels.patchnn.inpaint: argument 'hole' must have shape {tuple(x.shape[:3])} (the source's "
            f"[T, H, W]), got {tuple(hole.shape)}"
        )
    h = h.to(device=x.device, dtype=torch.bool)
    if not bool(h.any()):
        return source.clamp(0, 1)
    config = GPNNConfig(alpha=1.0) if config is None else config
    if fit_coarsest:
        rows = torch.nonzero(h.any(dim=(0, 2))).reshape(-1)
        cols = torch.nonzero(h.any(dim=(0, 1))).reshape(-1)
        extent = int(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
        side = min(x.shape[1], x.shape[2])
        coarsest = max(config.coarsest, math.ceil(side * max(config.patch[1:]) / extent))
        config = config.with_(coarsest=min(side, coarsest))
    if not bool(valid_patch_mask(~h, config.patch).any()):
        raise ValueError("vision_kernels.patchnn.inpaint: argument 'hole' leaves no complete patch to copy from")
    # Initial guess: the hole filled with the mean of the known pixels.
    known = ~h
    mean = (x * known[..., None]).sum(dim=(0, 1, 2)) / known.sum().clamp(min=1)
    start = torch.where(h[..., None], mean.to(x.dtype), x)
    coarse = resize(start, _coarsest(x.shape, x.shape, config)[1])
    y = synthesize(x, coarse, tuple(x.shape[:3]), config, hole=h, seed=seed)
    y = torch.where(h[..., None], y.clamp(0, 1), x)
    return y[0] if image else y


def collage(
    sources: Sequence[Tensor],
    *,
    size: Sequence[int] | None = None,
    config: GPNNConfig = _DEFAULT,
    seed: int = 0,
) -> Tensor:
    """Collage of several images: their side-by-side arrangement, made seamless by GPNN with keys
    from all of them.

    Sources are resized to a common height (the smallest), stacked as frames of one key array
    (padded, with key masks so no patch straddles images or padding), and GPNN starts from their
    naive side-by-side concatenation at the coarsest scale. ``size`` (``(H, W)``) defaults to that
    concatenation's size.
    """
    if len(sources) < 1:
        raise ValueError("vision_kernels.patchnn.collage: argument 'sources' must hold at least one image")
    images = [as_video(s, f"sources[{i}]")[0] for i, s in enumerate(sources)]
    if any(im.shape[0] != 1 for im in images) or len({im.shape[-1] for im in images}) != 1:
        raise ValueError("vision_kernels.patchnn.collage: 'sources' must be images with the same number of channels")
    height = min(im.shape[1] for im in images)
    resized = [resize(im, (1, height, max(1, round(im.shape[2] * height / im.shape[1])))) for im in images]
    width = max(im.shape[2] for im in resized)
    channels = images[0].shape[-1]
    stack = torch.zeros(len(resized), height, width, channels, dtype=images[0].dtype, device=images[0].device)
    valid = torch.zeros(len(resized), height, width, dtype=torch.bool, device=images[0].device)
    for i, im in enumerate(resized):
        stack[i, :, : im.shape[2]] = im[0]
        valid[i, :, : im.shape[2]] = True
    side_by_side = torch.cat([im[0] for im in resized], dim=1)[None]  # [1, H, sum W, C]
    output_shape = (1, *(tuple(size) if size is not None else side_by_side.shape[1:3]))
    shapes, output_shapes = pyramid_plan((1, *stack.shape[1:3]), output_shape, config)
    shapes = [(len(resized), *s[1:]) for s in shapes]
    key_masks = [valid_patch_mask(resize(valid.float()[..., None], s)[..., 0] > 0.999, config.patch) for s in shapes]
    coarse = resize(side_by_side, output_shapes[-1])
    out = synthesize(stack, coarse, output_shape, config, seed=seed, key_masks=key_masks)
    return out[0].clamp(0, 1)


def edit(source: Tensor, edited: Tensor, *, config: GPNNConfig = _DEFAULT, seed: int = 0) -> Tensor:
    """Editing / reshuffling: a user-edited version of ``source`` (objects moved, copied, removed
    roughly) is made coherent with ``source``'s patches. GPNN starts from ``edited`` at the coarsest
    scale; keys and values come from ``source``. The output has the edited image's size.
    """
    return _guided(source, edited, config, seed, 0.0, ("source", "edited"))
