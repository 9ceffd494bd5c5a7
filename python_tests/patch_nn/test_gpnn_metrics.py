"""The generation metrics of vision_kernels.patchnn.metrics (issue 15): identity fraction, SinGAN
diversity and the mean nearest-patch distance, on cases whose answer is known."""

from __future__ import annotations

import pytest
import torch

from vision_kernels.patchnn import diversity, identity_fraction, mean_patch_distance, sample_metrics


@pytest.fixture(scope="module")
def cat(skimage_image) -> torch.Tensor:
    return skimage_image("chelsea", 36)  # [36, 54, 3]


def test_identity_fraction_of_the_source_and_of_rearrangements(cat) -> None:
    assert identity_fraction(cat, cat) == 1.0
    swapped = torch.cat([cat[:, 27:], cat[:, :27]], dim=1)  # every patch moved by half the width
    assert identity_fraction(swapped, cat) < 0.2
    shifted = torch.roll(cat, 5, dims=0)
    assert identity_fraction(shifted, cat) < 0.2
    # Half the image copied in place, the other half moved: about half the patches are at home.
    half = cat.clone()
    half[:, 27:] = torch.flip(cat[:, 27:], dims=(0,))
    assert 0.35 < identity_fraction(half, cat) < 0.6


def test_identity_fraction_counts_ties_and_other_sizes(cat) -> None:
    flat = torch.full((20, 30, 3), 0.5)
    flat[5:12, 8:20] = 0.9  # every flat patch has many exact twins: ties count as identity
    assert identity_fraction(flat, flat) == 1.0
    bigger = torch.nn.functional.interpolate(cat.permute(2, 0, 1)[None], scale_factor=2, mode="nearest")
    bigger = bigger[0].permute(1, 2, 0)
    # Positions are matched as fractions of the grids: a sample of another size is compared fairly.
    metrics = sample_metrics(cat, bigger)
    assert 0.0 <= metrics.identity_fraction <= 1.0 and metrics.patch_distance >= 0
    video = torch.rand(5, 12, 14, 3, generator=torch.Generator().manual_seed(0))
    assert identity_fraction(video, video, (3, 5, 5)) == 1.0
    assert identity_fraction(torch.roll(video, 4, dims=2), video, (3, 5, 5)) < 0.2


def test_sample_metrics_agree_with_the_single_metrics(cat) -> None:
    sample = torch.cat([cat[:, 20:], cat[:, :20]], dim=1)
    metrics = sample_metrics(sample, cat)
    assert metrics.patch_distance == pytest.approx(mean_patch_distance(sample, cat), rel=1e-6)
    assert metrics.identity_fraction == identity_fraction(sample, cat)


def test_diversity_is_singans_normalized_pixel_std() -> None:
    g = torch.Generator().manual_seed(0)
    source = torch.rand(16, 16, 3, generator=g)
    assert diversity([source, source.clone(), source.clone()], source) == 0.0
    a, b = torch.zeros(16, 16, 3), torch.ones(16, 16, 3)
    # Two samples at 0 and 1: std 0.5 everywhere (population std), divided by the source's std.
    assert diversity([a, b], source) == pytest.approx(0.5 / float(source.double().std(correction=0)))
    noise = [torch.rand(64, 64, 3, generator=g) for _ in range(8)]
    expected = (1 / 12) ** 0.5 * (7 / 8) ** 0.5 / float(source.double().std(correction=0))
    assert diversity(noise, source) == pytest.approx(expected, rel=0.05)


def test_metric_argument_errors(cat) -> None:
    with pytest.raises(ValueError, match=r"diversity: argument 'samples' must hold at least 2"):
        diversity([cat], cat)
    with pytest.raises(ValueError, match=r"diversity: argument 'samples' must share one shape"):
        diversity([cat, cat[:30]], cat)
    with pytest.raises(ValueError, match=r"diversity: argument 'source' is constant"):
        diversity([cat, cat], torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match=r"identity_fraction.*same channels"):
        identity_fraction(cat, cat[..., :1])
    with pytest.raises(TypeError, match=r"argument 'output' must be a torch.Tensor"):
        identity_fraction(cat.numpy(), cat)  # type: ignore[arg-type]
