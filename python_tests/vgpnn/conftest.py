"""Fixtures of the VGPNN tests: small synthetic videos (moving shapes on a texture) and a fast config."""

from __future__ import annotations

import pytest
import torch

from vision_kernels.patchnn import GPNNConfig, moving_shapes, video_config

SHAPE = (8, 32, 40)  # [T, H, W]
PATCH = (3, 5, 5)


@pytest.fixture(scope="session")
def video() -> torch.Tensor:
    """float32 [8, 32, 40, 3]: three shapes moving over a blurred-noise texture."""
    return moving_shapes(*SHAPE, seed=0)


@pytest.fixture(scope="session")
def fast() -> GPNNConfig:
    """VGPNN defaults scaled to the 32-px test videos: 3x5x5 patches, coarsest 12 px, 2 steps per level."""
    return video_config(SHAPE, patch_size=PATCH, coarsest=12, iterations=2, progress=False)


@pytest.fixture(scope="session")
def samples(video: torch.Tensor, fast: GPNNConfig) -> list[torch.Tensor]:
    """generate_video of the test video with seeds 1, 2, 3."""
    from vision_kernels.patchnn import generate_video

    return [generate_video(video, seed=seed, config=fast) for seed in (1, 2, 3)]
