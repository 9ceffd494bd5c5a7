"""GPNN random generation is diverse (issue 15): several seeds at a small size, each sample far from
a copy of the source (identity fraction) and the samples different from each other (SinGAN's
diversity), still made of source patches. Fast settings (36-px image, 3 PNN steps per level)."""

from __future__ import annotations

import pytest
import torch

from vision_kernels.patchnn import GPNNConfig, diversity, generate, sample_metrics

FAST = GPNNConfig(iterations=3, progress=False)
SEEDS = (0, 1, 2, 3, 4)
# A copy of the source scores identity 1; a re-arrangement scores near 0 (the defaults: <= 0.03 here).
IDENTITY_BOUND = 0.2
# Per-pixel std across the samples over the source's std: 0 for copies, ~0.5 for the defaults here.
DIVERSITY_BOUND = 0.3
# Mean nearest-patch distance per sample, ~2x the defaults' largest here (uniform noise scores ~8.6e-2).
PATCH_BOUND = {"chelsea": 2.5e-3, "astronaut": 1e-2}


@pytest.fixture(scope="module")
def cat(skimage_image) -> torch.Tensor:
    return skimage_image("chelsea", 36)  # [36, 54, 3]


@pytest.fixture(scope="module", params=["chelsea", "astronaut"])
def source_and_samples(request, skimage_image) -> tuple[str, torch.Tensor, list[torch.Tensor]]:
    """A 36-px skimage image (chelsea; astronaut, the one the official noise copies most) and its samples."""
    image = skimage_image(request.param, 36)  # [36, W, 3]
    return request.param, image, [generate(image, seed=seed, config=FAST) for seed in SEEDS]


def test_no_sample_is_a_copy_of_the_source(source_and_samples) -> None:
    name, image, samples = source_and_samples
    for seed, sample in zip(SEEDS, samples, strict=True):
        metrics = sample_metrics(sample, image)
        assert metrics.identity_fraction <= IDENTITY_BOUND, (name, seed, metrics)
        assert metrics.patch_distance < PATCH_BOUND[name], (name, seed, metrics)


def test_samples_are_diverse(source_and_samples) -> None:
    name, image, samples = source_and_samples
    assert diversity(samples, image) >= DIVERSITY_BOUND, name


def test_the_official_noise_copies_the_source(cat) -> None:
    """The cause of issue 15: from the coarsest source level plus the official code's noise 0.75,
    seed 0 returns (nearly) the source. This is what the two tests above catch if the defaults go
    back to it."""
    copied = generate(cat, seed=0, config=FAST.with_(initial_guess="source"))
    assert sample_metrics(copied, cat).identity_fraction > 0.5


def test_initial_guess_option(cat) -> None:
    from vision_kernels.patchnn import initial_guess

    x = cat[None]
    assert FAST.initial_guess == "noise" and FAST.noise_std == 0.75  # the defaults (issue 15)
    noise_start = initial_guess(x, x.shape[:3], FAST.with_(noise_std=0.0), seed=0)
    assert torch.allclose(noise_start, x.mean(dim=(0, 1, 2)).expand_as(noise_start))
    source_start = initial_guess(x, x.shape[:3], FAST.with_(initial_guess="source", noise_std=0.0), seed=0)
    assert source_start.shape == noise_start.shape and float(source_start.std()) > 0.05
    a = initial_guess(x, x.shape[:3], FAST, seed=1)
    assert torch.equal(a, initial_guess(x, x.shape[:3], FAST, seed=1))
    noise = a - noise_start  # [1, H, W, 3]
    torch.testing.assert_close(noise[..., 0], noise[..., 1])  # one draw per pixel, shared by the channels
    assert 0.6 < float(noise.std()) < 0.9  # noise_std 0.75
    on_source = initial_guess(x, x.shape[:3], FAST.with_(initial_guess="source"), seed=1) - source_start
    torch.testing.assert_close(on_source, noise)  # the same draw on either base
    per_channel = initial_guess(x, x.shape[:3], FAST, seed=1, per_channel=True) - noise_start
    assert float((per_channel[..., 0] - per_channel[..., 1]).abs().mean()) > 0.3
    with pytest.raises(ValueError, match=r"argument 'initial_guess' must be one of \('source', 'noise'\)"):
        GPNNConfig(initial_guess="zeros")


def _parse(module, group: str, argv: list[str]):  # type: ignore[no-untyped-def]
    import argparse

    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([group, *argv])


def test_command_line_defaults_are_the_configs(tmp_path) -> None:
    """The gpnn / vgpnn commands take every default from GPNNConfig / video_config (no default of
    their own that would bypass the issue-15 settings) and expose the start as --initial-guess."""
    from vision_kernels.patchnn import cli, video_cli, video_config

    image, video, out = str(tmp_path / "in.png"), str(tmp_path / "in.mp4"), str(tmp_path / "out.png")
    assert cli._config(_parse(cli, "gpnn", ["generate", image, "-o", out])) == GPNNConfig()
    changed = cli._config(_parse(cli, "gpnn", ["generate", image, "-o", out, "--initial-guess", "source"]))
    assert changed == GPNNConfig(initial_guess="source")
    shape = (13, 72, 128, 3)
    args = _parse(video_cli, "vgpnn", ["generate", video, "-o", str(tmp_path / "o.mp4")])
    assert video_cli._config(args, shape) == video_config(shape)
    args = _parse(video_cli, "vgpnn", ["generate", video, "-o", str(tmp_path / "o.mp4"), "--initial-guess", "source"])
    assert video_cli._config(args, shape) == video_config(shape, initial_guess="source")
