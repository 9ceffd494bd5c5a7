"""VGPNN on small synthetic videos: the pyramid, the four applications, search choice, bad input."""

from __future__ import annotations

import logging

import pytest
import torch

from vision_kernels.patchnn import (
    GPNNConfig,
    analogy_video,
    choose_search,
    diversity,
    frame_difference_motion,
    generate_video,
    identity_fraction,
    inpaint_video,
    mean_patch_distance,
    moving_shapes,
    pyramid_plan,
    pyramid_shapes,
    retarget_video,
    video_config,
)
from vision_kernels.patchnn.search import VIDEO_EXACT_WORK_LIMIT
from vision_kernels.patchnn.video import LARGE_VIDEO_PATCH, LARGE_VIDEO_VOXELS

from .conftest import PATCH, SHAPE


def _change(x: torch.Tensor) -> float:
    """Mean absolute frame-to-frame change."""
    return float((x[1:] - x[:-1]).abs().mean())


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.flatten() - x.mean(), y.flatten() - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def _foreign_distance(video: torch.Tensor) -> float:
    """Mean nearest-patch distance to ``video`` of another video of the same kind (a 'not copied' level)."""
    return mean_patch_distance(moving_shapes(*SHAPE, seed=3), video, PATCH)


def test_video_config_defaults_follow_the_paper() -> None:
    config = video_config((13, 144, 256))
    assert config.patch == (3, 7, 7) and config.reduction == "median" and config.alpha is None
    assert config.iterations == 5 and config.coarsest_iterations == 1 and config.search == "auto"
    assert config.initial_guess == "noise" and config.noise_std == 2.5  # noise alone (issue 15)
    assert abs(config.pyramid_ratio - 1 / 0.85) < 1e-12 and abs(config.temporal_ratio - 1 / 0.85) < 1e-12
    assert video_config((40, 400, 600)).patch == LARGE_VIDEO_PATCH and 40 * 400 * 600 > LARGE_VIDEO_VOXELS
    assert video_config((13, 144, 256), reduction="mean").reduction == "mean"
    sources, outputs = pyramid_plan((13, 144, 256), (13, 144, 256), config)
    assert sources[0] == (13, 144, 256) and sources == outputs
    assert sources[-1][0] == 3 and min(sources[-1][1:]) == 15  # both minima reached
    frames, sides = [s[0] for s in sources], [s[1] for s in sources]
    assert all(a >= b for a, b in zip(frames, frames[1:], strict=False))
    assert all(a > b for a, b in zip(sides[:-1], sides[1:-1], strict=False))
    assert abs(sides[0] / sides[1] - 1 / 0.85) < 0.03 and abs(frames[0] / frames[1] - 13 / 11) < 1e-9


def test_pyramid_continues_until_the_temporal_minimum() -> None:
    # Long, small video: the temporal minimum needs more levels than the spatial one.
    shapes = pyramid_shapes((64, 20, 20), ratio=1 / 0.85, coarsest=15, temporal_ratio=1 / 0.85, coarsest_frames=3)
    assert shapes[-1] == (3, 15, 15)
    assert [s[1] for s in shapes[-3:]] == [15, 15, 15]
    # An image pyramid (temporal_ratio 1) is unchanged by the temporal rule.
    assert pyramid_shapes((1, 60, 90), ratio=4 / 3, coarsest=14)[-1] == (1, 14, 21)


def test_generated_patches_come_from_the_input(video, samples) -> None:
    foreign = _foreign_distance(video)
    for sample in samples:
        assert sample.shape == video.shape and sample.dtype == torch.float32
        assert float(sample.min()) >= 0 and float(sample.max()) <= 1
        assert mean_patch_distance(sample, video, PATCH) < 0.25 * foreign


def test_generation_is_diverse_across_seeds_and_reproducible(video, samples, fast) -> None:
    for i in range(len(samples)):
        for j in range(i):
            assert float((samples[i] - samples[j]).abs().mean()) > 0.02, (i, j)
    for sample in samples:  # issue 15: no sample repeats the input (the input itself scores 1)
        assert identity_fraction(sample, video, PATCH) <= 0.2
    assert diversity(samples, video) >= 0.2  # SinGAN's diversity: 0 for copies
    assert torch.equal(generate_video(video, seed=1, config=fast), samples[0])


def test_generation_is_temporally_coherent(video, samples) -> None:
    source = _change(video)
    shuffled = _change(video[torch.randperm(video.shape[0], generator=torch.Generator().manual_seed(0))])
    for sample in samples:
        change = _change(sample)
        assert 0.3 * source < change < 2.0 * source, (change, source)
        assert change < 0.75 * shuffled


def test_default_config_generates_a_new_coherent_video(video) -> None:
    sample = generate_video(video, seed=2, config=video_config(video.shape, progress=False))
    assert sample.shape == video.shape
    assert float((sample - video).abs().mean()) > 0.02
    assert mean_patch_distance(sample, video, (3, 7, 7)) < 0.25 * mean_patch_distance(
        moving_shapes(*SHAPE, seed=3), video, (3, 7, 7)
    )
    assert _change(sample) < 2.0 * _change(video)


@pytest.mark.parametrize("size", [(12, 32, 40), (5, 32, 40), (8, 32, 60), (8, 24, 28), (10, 40, 30)])
def test_retarget_and_generate_give_the_requested_shape(video, fast, size) -> None:
    out = retarget_video(video, size, config=fast)
    assert tuple(out.shape) == (*size, 3)
    assert mean_patch_distance(out, video, PATCH) < 0.3 * _foreign_distance(video)
    assert _change(out) < 2.0 * _change(video)


def test_generate_with_another_length_and_size(video, fast) -> None:
    out = generate_video(video, seed=4, size=(11, 36, 52), config=fast)
    assert tuple(out.shape) == (11, 36, 52, 3)
    assert mean_patch_distance(out, video, PATCH) < 0.3 * _foreign_distance(video)
    assert tuple(generate_video(video, seed=4, size=(30, 36), config=fast).shape) == (8, 30, 36, 3)


def test_inpainting_keeps_unmasked_voxels_and_fills_the_hole(video, fast) -> None:
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[2:6, 10:20, 12:24] = True
    out = inpaint_video(video, mask, config=fast.with_(alpha=1.0))
    assert out.shape == video.shape
    assert torch.equal(out[~mask], video[~mask])
    hole = out[mask]
    mean_fill = video[~mask].mean(dim=0)
    assert float((hole - mean_fill).abs().mean()) > 0.03  # not the initial flat fill
    assert mean_patch_distance(out, video, PATCH) < 0.25 * _foreign_distance(video)
    # A 2-D mask is the same hole in every frame; uint8 masks are accepted too.
    flat = torch.zeros(SHAPE[1:], dtype=torch.uint8)
    flat[4:10, 4:10] = 1
    out2 = inpaint_video(video, flat, config=fast.with_(alpha=1.0))
    keep = ~flat.bool().expand(SHAPE)
    assert torch.equal(out2[keep], video[keep])


def test_analogy_takes_motion_from_layout_and_patches_from_appearance(fast) -> None:
    layout = moving_shapes(*SHAPE, seed=5)
    appearance = moving_shapes(*SHAPE, seed=7).flip(-1)  # other colours: patches tell the sources apart
    out = analogy_video(layout, appearance, config=fast.with_(alpha=1.0))
    assert out.shape == layout.shape
    assert mean_patch_distance(out, appearance, PATCH) < 0.4 * mean_patch_distance(out, layout, PATCH)
    motion = frame_difference_motion(out)
    assert _corr(motion, frame_difference_motion(layout)) > 0.4
    assert _corr(motion, frame_difference_motion(layout)) > _corr(motion, frame_difference_motion(appearance)) + 0.2


def test_analogy_accepts_a_user_motion_channel(fast) -> None:
    layout = moving_shapes(*SHAPE, seed=5)
    appearance = moving_shapes(*SHAPE, seed=7)
    flow_a = torch.rand(SHAPE)  # e.g. optical-flow magnitude, [T, H, W]
    flow_b = torch.rand(*SHAPE, 2)  # or a [T, H, W, G] field
    with pytest.raises(ValueError, match="motion channels differ"):
        analogy_video(layout, appearance, motion=(flow_a, flow_b), config=fast)
    with pytest.raises(ValueError, match=r"analogy_video: argument 'motion\[1\]'"):
        analogy_video(layout, appearance, motion=(flow_a, flow_a[:4]), config=fast)
    out = analogy_video(layout, appearance, motion=(flow_a, flow_b[..., 0]), motion_levels=0.3, config=fast)
    assert out.shape == layout.shape


def test_frame_difference_motion_marks_the_moving_shapes(video) -> None:
    motion = frame_difference_motion(video)
    assert motion.shape == (*SHAPE, 1) and float(motion.min()) >= 0 and float(motion.max()) <= 1
    moving = (video[1:] - video[:-1]).abs().amax(dim=-1) > 0.05  # [T-1, H, W]
    assert float(motion[:-1][moving].mean()) > 3 * float(motion[:-1][~moving].mean())
    still = video[:1].expand(5, -1, -1, -1)
    assert float(frame_difference_motion(still).abs().max()) == 0


def test_auto_search_is_chosen_by_size_and_logged(video, fast, caplog) -> None:
    video_limit = {"exact_limit": VIDEO_EXACT_WORK_LIMIT, "log": False}
    assert fast.exact_limit == VIDEO_EXACT_WORK_LIMIT  # VGPNN's default, below the images' limit
    assert choose_search((4, 16, 20, 3), (8, 32, 40, 3), (3, 7, 7), **video_limit) == "exact"
    assert choose_search((8, 32, 40, 3), (8, 32, 40, 3), (3, 7, 7), **video_limit) == "patchmatch"
    assert choose_search((13, 144, 256, 3), (13, 144, 256, 3), (3, 7, 7), **video_limit) == "patchmatch"
    assert choose_search((13, 144, 256, 3), (13, 144, 256, 3), (3, 7, 7), query_count=2, **video_limit) == "exact"
    # images (default limit): exact up to ~105 px with alpha, PatchMatch above
    assert choose_search((1, 105, 105, 3), (1, 105, 105, 3), 7, alpha=0.005, log=False) == "exact"
    assert choose_search((1, 141, 141, 3), (1, 141, 141, 3), 7, alpha=0.005, log=False) == "patchmatch"
    with caplog.at_level(logging.INFO, logger="vision_kernels.patchnn"):
        retarget_video(video, (8, 32, 40), config=fast.with_(exact_limit=3e7))
    chosen = [r.getMessage() for r in caplog.records if "patch search" in r.getMessage()]
    levels = len(pyramid_plan(video.shape, video.shape, fast)[0])
    assert len(chosen) == levels  # one decision per level
    assert any(m.startswith("patch search exact") for m in chosen)
    assert any(m.startswith("patch search patchmatch") for m in chosen)


def test_bad_input_gives_clear_errors(video, fast) -> None:
    with pytest.raises(ValueError, match=r"generate_video: argument 'size' .* below the coarsest pyramid level"):
        generate_video(video, size=(2, 32, 40), config=fast)
    with pytest.raises(ValueError, match=r"retarget_video: argument 'size' .* below the coarsest"):
        retarget_video(video, (8, 8, 40), config=fast)
    with pytest.raises(ValueError, match=r"retarget_video: argument 'size' must be"):
        retarget_video(video, (8,), config=fast)
    with pytest.raises(ValueError, match=r"inpaint_video: argument 'mask' must have shape \(8, 32, 40\)"):
        inpaint_video(video, torch.zeros(8, 32, 41, dtype=torch.bool), config=fast)
    with pytest.raises(ValueError, match=r"inpaint_video: argument 'mask' must have shape"):
        inpaint_video(video, torch.zeros(7, 32, 40, dtype=torch.bool), config=fast)
    with pytest.raises(TypeError, match=r"inpaint_video: argument 'mask' must be a torch.Tensor"):
        inpaint_video(video, [[0]], config=fast)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"generate_video: argument 'video' must have shape \[T, H, W, C\]"):
        generate_video(video[0], config=fast)
    with pytest.raises(ValueError, match="NaN or Inf"):
        generate_video(torch.full_like(video, float("nan")), config=fast)
    with pytest.raises(TypeError, match="float or uint8"):
        generate_video(torch.zeros(8, 32, 40, 3, dtype=torch.int32), config=fast)
    with pytest.raises(ValueError, match=r"analogy_video: argument 'layout' .* below the coarsest"):
        analogy_video(video[:2], video, config=fast)
    with pytest.raises(ValueError, match="same channels"):
        analogy_video(video, video[..., :1], config=fast)
    with pytest.raises(ValueError, match="coarsest_frames"):
        pyramid_shapes((8, 32, 40), coarsest_frames=0)
    with pytest.raises(ValueError, match="search"):
        GPNNConfig(search="brute")


def test_uint8_input_is_scaled(video, fast) -> None:
    as_bytes = (video * 255).round().to(torch.uint8)
    out = retarget_video(as_bytes, (8, 32, 40), config=fast)
    assert out.dtype == torch.float32 and float(out.max()) <= 1
    assert mean_patch_distance(out, as_bytes.float() / 255, PATCH) < 0.3 * _foreign_distance(video)


def test_progress_bar_counts_levels_and_iterations(video, fast, capsys) -> None:
    generate_video(video, seed=1, config=fast.with_(progress=True))
    levels = len(pyramid_plan(video.shape, video.shape, fast)[0])
    steps = 1 + fast.iterations * (levels - 1)  # one step at the coarsest level
    err = capsys.readouterr().err
    assert "VGPNN generate" in err and f"0/{steps}" in err  # the bar counts every PNN step of every level
