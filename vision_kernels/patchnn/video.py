"""VGPNN: diverse generation and manipulation from a single video (Haim, Feinstein, Granot, Shocher,
Bagon, Dekel, Irani, "Diverse Generation from a Single Video Made Possible", ECCV 2022).

GPNN (:mod:`vision_kernels.patchnn.gpnn`) in space-time: videos are float ``[T, H, W, C]`` in
[0, 1], patches are ``pt x ph x pw`` (3 x 7 x 7 by default), and the pyramid has separate spatial
and temporal factors and minimum sizes. At every level ``l`` (coarsest first) and PNN step::

    Q = patches(y),  K = patches(keys),  V = patches(x_l)
    j(i) = argmin_j D(Q_i, K_j)            (D: mean squared difference of [0, 1] voxels)
    y    = fold(V[j])                      (voting: per-channel median of the overlapping votes)

with ``keys`` the upscaled coarser level on a level's first step and ``x_l`` afterwards. The
applications differ in the coarsest initial guess, the output shape, masks and guide channels:

* :func:`generate_video`: ``y_L = `` the input's mean colour ``+ noise`` (noise alone; or ``x_L``
  resized to the output's coarsest shape ``+ noise`` with ``initial_guess="source"``);
* :func:`retarget_video`: ``y_L = x_L`` resized (no noise) to a shorter/longer/wider/narrower shape;
* :func:`analogy_video`: the motion of a *layout* video drawn with the patches of an *appearance*
  video, matching on a motion channel (frame-difference magnitude, or the user's optical flow);
* :func:`inpaint_video`: a space-time hole filled from the rest of the video.

Defaults follow the official code (github.com/nivha/single_video_generation): downscale 0.85 in
space and time per level, coarsest level 3 frames x 15 px, 5 PNN steps per level (1 at the
coarsest), plain nearest neighbours (``alpha=None``) for generation, median voting. Search is
``"auto"``: exact while a level is small, PatchMatch above (the choice is logged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .apps import inpaint, retarget
from .gpnn import GPNNConfig, initial_guess, pyramid_plan, synthesize
from .pyramid import resize
from .search import VIDEO_EXACT_WORK_LIMIT

__all__ = [
    "VIDEO_PATCH",
    "LARGE_VIDEO_PATCH",
    "LARGE_VIDEO_VOXELS",
    "video_config",
    "check_video",
    "generate_video",
    "retarget_video",
    "analogy_video",
    "inpaint_video",
    "frame_difference_motion",
]

VIDEO_PATCH = (3, 7, 7)
LARGE_VIDEO_PATCH = (3, 5, 5)
# Videos with more voxels than this get LARGE_VIDEO_PATCH (the official code switches to 3x5x5 above
# 500000 x 15 voxels, where 3x7x7 patches make the search and the voting ~2x slower for little gain).
LARGE_VIDEO_VOXELS = 7_500_000


def video_config(shape: Sequence[int] | None = None, **changes: object) -> GPNNConfig:
    """VGPNN's default settings, for a video of ``shape`` ``(T, H, W, ...)`` if given.

    ``patch_size`` (3, 7, 7) (``LARGE_VIDEO_PATCH`` when ``T H W > LARGE_VIDEO_VOXELS``),
    ``pyramid_ratio = temporal_ratio = 1 / 0.85``, ``coarsest = 15`` px, ``coarsest_frames = 3``,
    ``iterations = 5`` (1 at the coarsest level), ``alpha = None``, ``noise_std = 2.5`` (per channel)
    with ``initial_guess = "noise"`` (noise alone; the official code adds it to the coarsest input
    level, ``"source"``, which returned the input for some seeds), ``search = "auto"``
    (``exact_limit`` 1e9), ``reduction = "median"``; ``changes`` override any of them.
    """
    patch = VIDEO_PATCH
    if shape is not None and math.prod(int(s) for s in shape[:3]) > LARGE_VIDEO_VOXELS:
        patch = LARGE_VIDEO_PATCH
    base = GPNNConfig(
        patch_size=patch,
        pyramid_ratio=1 / 0.85,
        coarsest=15,
        temporal_ratio=1 / 0.85,
        coarsest_frames=3,
        iterations=5,
        coarsest_iterations=1,
        alpha=None,
        noise_std=2.5,
        initial_guess="noise",
        search="auto",
        exact_limit=VIDEO_EXACT_WORK_LIMIT,
        reduction="median",
    )
    return base.with_(**changes)


def check_video(video: Tensor, name: str, function: str) -> Tensor:
    """``[T, H, W, C]`` float (or uint8, scaled by 1/255) tensor -> float32 (float64 stays float64)."""
    where = f"vision_kernels.patchnn.{function}"
    if not isinstance(video, Tensor):
        raise TypeError(f"{where}: argument '{name}' must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 4 or min(video.shape) < 1:
        raise ValueError(
            f"{where}: argument '{name}' must have shape [T, H, W, C] with every size >= 1, got {tuple(video.shape)}"
        )
    if video.dtype == torch.uint8:
        return video.to(torch.float32).div_(255.0)
    if not video.is_floating_point():
        raise TypeError(f"{where}: argument '{name}' must be a float or uint8 tensor, got {video.dtype}")
    if video.dtype in (torch.float16, torch.bfloat16):
        video = video.float()
    if not bool(torch.isfinite(video).all()):
        raise ValueError(f"{where}: argument '{name}' holds NaN or Inf values")
    return video


def _config(config: GPNNConfig | None, shape: Sequence[int], **defaults: object) -> GPNNConfig:
    return video_config(shape, **defaults) if config is None else config


def _output_shape(video: Tensor, size: Sequence[int] | None, config: GPNNConfig, function: str) -> tuple:
    """``(T, H, W)`` of the output, checked against the coarsest pyramid level and the patch."""
    if size is None:
        shape = tuple(video.shape[:3])
    else:
        shape = tuple(int(s) for s in size)
        if len(shape) == 2:
            shape = (video.shape[0], *shape)
        if len(shape) != 3:
            raise ValueError(
                f"vision_kernels.patchnn.{function}: argument 'size' must be (T, H, W) or (H, W), got {tuple(size)}"
            )
    _check_above_coarsest(shape, config, function, "size")
    return shape


def _check_above_coarsest(shape: Sequence[int], config: GPNNConfig, function: str, name: str) -> None:
    pt, ph, pw = config.patch
    frames = max(pt, config.coarsest_frames)
    side = max(ph, pw, config.coarsest)
    if shape[0] < frames or min(shape[1], shape[2]) < side or shape[1] < ph or shape[2] < pw:
        raise ValueError(
            f"vision_kernels.patchnn.{function}: argument '{name}' (T, H, W) = {tuple(shape)} is below the coarsest "
            f"pyramid level: needs at least {frames} frames and a shorter side of {side} px "
            f"(patch {config.patch}, coarsest_frames {config.coarsest_frames}, coarsest {config.coarsest})"
        )


def generate_video(
    video: Tensor,
    *,
    seed: int = 0,
    size: Sequence[int] | None = None,
    config: GPNNConfig | None = None,
) -> Tensor:
    """A random sample of a single video: VGPNN from Gaussian noise at the coarsest level.

    ``y_L = mean colour of x + n`` (``initial_guess="noise"``, the default) or
    ``y_L = resize(x_L, output's coarsest shape) + n`` (``"source"``, the official code's),
    ``n ~ N(0, noise_std^2)`` independently per voxel and channel, drawn from ``seed``; then
    ``iterations`` PNN steps per level up to the output shape (1 at the coarsest). Every output
    patch is copied from the input; different seeds give different arrangements. The default
    ``noise_std = 2.5`` is the official code's (5 on its [-1, 1] scale). With the ``"source"``
    start the input's layout survives the noise (3x7x7x3 space-time patches average it out) and
    some samples return the input (with 0.75, GPNN's image setting, a 8x48x64 test video came back
    unchanged for every seed); see :class:`~vision_kernels.patchnn.GPNNConfig` for the causes.

    Args:
        video: float ``[T, H, W, C]`` in [0, 1] (uint8 is scaled by 1/255).
        seed: random seed (noise and PatchMatch).
        size: output ``(T, H, W)`` (or ``(H, W)``: same length); default the input's. It may be
            longer/shorter/larger/smaller than the input, down to the coarsest pyramid level.
        config: :class:`GPNNConfig` (default :func:`video_config` for this video).

    Returns:
        float ``[T', H', W', C]`` in [0, 1].
    """
    x = check_video(video, "video", "generate_video")
    config = _config(config, x.shape)
    output_shape = _output_shape(x, size, config, "generate_video")
    coarse = initial_guess(x, output_shape, config, seed=seed, per_channel=True)  # [T_L, H_L, W_L, C]
    y = synthesize(x, coarse, output_shape, config, seed=seed, desc="VGPNN generate")
    return y.clamp(0.0, 1.0)


def retarget_video(video: Tensor, size: Sequence[int], *, config: GPNNConfig | None = None, seed: int = 0) -> Tensor:
    """Spatio-temporal retargeting: the video made shorter/longer (T) or narrower/wider (H, W)
    without stretching its content: the coarsest input level resized to the output's coarsest shape
    (no noise), then VGPNN restores the details from the input's patches at every scale.

    Args:
        video: float ``[T, H, W, C]`` in [0, 1].
        size: output ``(T, H, W)`` (or ``(H, W)``), down to the coarsest pyramid level.
        config: :class:`GPNNConfig` (default :func:`video_config`).
        seed: PatchMatch seed.
    """
    x = check_video(video, "video", "retarget_video")
    config = _config(config, x.shape)
    return retarget(x, _output_shape(x, size, config, "retarget_video"), config=config, seed=seed)


def frame_difference_motion(video: Tensor, *, sigma: float = 1.0, gamma: float = 0.5) -> Tensor:
    """A motion channel ``[T, H, W, 1]`` in [0, 1] from frame differences (no optical flow needed).

    ``d_t = mean_c |x_{t+1} - x_t|`` (the last difference repeated for the last frame), averaged with
    the previous difference so that frame ``t`` sees motion on both sides, blurred spatially by a
    Gaussian of ``sigma`` px, divided by its 99th percentile, clipped to 1, and raised to ``gamma``
    (< 1 lifts slow motion; VGPNN's code uses a similar power on flow magnitudes).
    Replace it by your own optical-flow magnitude in :func:`analogy_video` (``motion=``).
    """
    x = check_video(video, "video", "frame_difference_motion").float()
    if x.shape[0] < 2:
        return torch.zeros((*x.shape[:3], 1), dtype=x.dtype, device=x.device)
    diff = (x[1:] - x[:-1]).abs().mean(dim=-1)  # [T-1, H, W]
    forward = torch.cat([diff, diff[-1:]])  # d_t for t = 0..T-1
    backward = torch.cat([diff[:1], diff])  # d_{t-1}
    motion = 0.5 * (forward + backward)  # [T, H, W]
    if sigma > 0:
        radius = max(1, math.ceil(3 * sigma))
        taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        planes = motion[:, None]  # [T, 1, H, W]
        planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
        motion = planes[:, 0]
    scale = torch.quantile(motion.reshape(-1)[:: max(1, motion.numel() // 1_000_000)], 0.99)
    motion = (motion / scale.clamp(min=1e-6)).clamp(0.0, 1.0).pow(gamma)
    return motion[..., None]


def _as_guide(motion: Tensor, video: Tensor, name: str) -> Tensor:
    guide = motion[..., None] if motion.dim() == 3 else motion
    if guide.dim() != 4 or tuple(guide.shape[:3]) != tuple(video.shape[:3]):
        raise ValueError(
            f"vision_kernels.patchnn.analogy_video: argument '{name}' must have shape [T, H, W] or [T, H, W, G] "
            f"with (T, H, W) = {tuple(video.shape[:3])}, got {tuple(motion.shape)}"
        )
    return guide.to(device=video.device, dtype=video.dtype)


def analogy_video(
    layout: Tensor,
    appearance: Tensor,
    *,
    motion: tuple[Tensor, Tensor] | None = None,
    motion_weight: float = 1.0,
    motion_levels: float = 0.5,
    config: GPNNConfig | None = None,
    seed: int = 0,
) -> Tensor:
    """Video analogy: the dynamics and layout of ``layout`` drawn with the patches of ``appearance``.

    Queries and keys get a motion channel ``m`` (weight ``motion_weight``) next to the colours, values
    are ``appearance``'s colours only::

        j(i) = argmin_j mean over (C + G) channels of ([y, w m_layout]_i - [k, w m_appearance]_j)^2

    At the coarsest level the first step matches on motion alone (the output starts as the layout's
    motion map, as in the paper), so moving regions of the output take moving patches of the
    appearance video where the layout video moves; the motion channel is used on the coarsest
    ``motion_levels`` fraction of the pyramid, the finer levels refine appearance only.

    Args:
        layout: float ``[T, H, W, C]``: gives the output's shape, layout and motion.
        appearance: float ``[T', H', W', C]``: gives every output patch.
        motion: ``(m_layout, m_appearance)``, ``[T, H, W]`` or ``[T, H, W, G]`` per video, e.g. optical
            flow magnitudes or flow fields scaled to ~[0, 1]; default :func:`frame_difference_motion`.
        motion_weight: factor on the motion channel (its weight in ``D``).
        motion_levels: fraction of the levels (coarsest first) that match on motion.
        config: :class:`GPNNConfig` (default :func:`video_config` with ``alpha=1``, as the official
            analogy script, and 2 PNN steps per level; that script uses 1 step with 3x5x5 patches).
        seed: PatchMatch seed.

    Returns:
        float ``[T, H, W, C]`` (the layout's shape) in [0, 1].
    """
    function = "analogy_video"
    a = check_video(layout, "layout", function)
    b = check_video(appearance, "appearance", function).to(a)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"vision_kernels.patchnn.{function}: 'layout' and 'appearance' must have the same channels, got "
            f"{a.shape[-1]} and {b.shape[-1]}"
        )
    if not 0 <= motion_levels <= 1 or motion_weight < 0:
        raise ValueError(
            f"vision_kernels.patchnn.{function}: need 0 <= motion_levels <= 1 and motion_weight >= 0, got "
            f"{motion_levels}, {motion_weight}"
        )
    config = _config(config, b.shape, alpha=1.0, iterations=2)
    _check_above_coarsest(a.shape, config, function, "layout")
    _check_above_coarsest(b.shape, config, function, "appearance")
    if motion is None:
        m_a, m_b = frame_difference_motion(a), frame_difference_motion(b)
    else:
        m_a, m_b = _as_guide(motion[0], a, "motion[0]"), _as_guide(motion[1], b, "motion[1]")
        if m_a.shape[-1] != m_b.shape[-1]:
            raise ValueError(
                f"vision_kernels.patchnn.{function}: the two motion channels differ in count: "
                f"{m_a.shape[-1]} and {m_b.shape[-1]}"
            )
    output_shape = tuple(a.shape[:3])
    levels = len(pyramid_plan(b.shape, output_shape, config)[0])
    guide_levels = max(1, math.ceil(levels * motion_levels)) if motion_levels > 0 else 0
    coarse = resize(a, pyramid_plan(b.shape, output_shape, config)[1][-1])
    y = synthesize(
        b,
        coarse,
        output_shape,
        config,
        seed=seed,
        guides=(motion_weight * m_a, motion_weight * m_b),
        guide_levels=guide_levels,
        guide_only_start=guide_levels > 0,
        desc="VGPNN analogy",
    )
    return y.clamp(0.0, 1.0)


def inpaint_video(
    video: Tensor, mask: Tensor, *, config: GPNNConfig | None = None, seed: int = 0, fit_coarsest: bool = True
) -> Tensor:
    """Conditional video inpainting: fill the space-time ``mask`` (True = missing) from the rest.

    Only query patches touching the hole are searched, keys never overlap it, and every voxel outside
    the mask is returned exactly as given, at every level. See :func:`vision_kernels.patchnn.inpaint`.

    Args:
        video: float ``[T, H, W, C]`` in [0, 1].
        mask: bool ``[T, H, W]`` (or ``[H, W]``: the same hole in every frame; ``[T, H, W, 1]`` works too).
        config: :class:`GPNNConfig` (default :func:`video_config` with ``alpha=1``, GPNN's inpainting
            setting).
        seed: PatchMatch seed.
        fit_coarsest: raise the coarsest spatial size so that the hole spans about one patch there.

    Raises:
        ValueError: ``mask`` of another shape, or a hole that leaves no complete patch to copy from.
    """
    function = "inpaint_video"
    x = check_video(video, "video", function)
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"vision_kernels.patchnn.{function}: argument 'mask' must be a torch.Tensor, got {type(mask).__name__}"
        )
    hole = mask
    if hole.dim() == 4 and hole.shape[-1] == 1:
        hole = hole[..., 0]
    if hole.dim() == 2 and tuple(hole.shape) == tuple(x.shape[1:3]):
        hole = hole[None].expand(x.shape[:3])
    if tuple(hole.shape) != tuple(x.shape[:3]):
        raise ValueError(
            f"vision_kernels.patchnn.{function}: argument 'mask' must have shape {tuple(x.shape[:3])} (the video's "
            f"[T, H, W]) or {tuple(x.shape[1:3])} (one frame), got {tuple(mask.shape)}"
        )
    hole = (hole != 0) if hole.dtype != torch.bool else hole
    config = _config(config, x.shape, alpha=1.0)
    _check_above_coarsest(x.shape, config, function, "video")
    return inpaint(x, hole.contiguous(), config=config, seed=seed, fit_coarsest=fit_coarsest)
