"""Fixtures of the patch_nn family's tests: small skimage sample images as float32 [H, W, 3] tensors (GPNN,
the ops) and small synthetic videos, moving shapes on a texture, with a fast VGPNN config."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from vision_kernels.patchnn import GPNNConfig, moving_shapes, video_config

SHAPE = (8, 32, 40)  # [T, H, W] of the test videos
PATCH = (3, 5, 5)


@pytest.fixture(scope="session")
def skimage_image() -> Callable[[str, int], torch.Tensor]:
    """``skimage_image(name, height)``: skimage.data.<name>() resized to ``height`` rows, in [0, 1]."""
    from skimage import data, transform

    cache: dict[tuple[str, int], torch.Tensor] = {}

    def load(name: str, height: int) -> torch.Tensor:
        if (name, height) not in cache:
            image = getattr(data, name)()
            if image.ndim == 2:
                image = np.stack([image] * 3, axis=-1)
            width = round(height * image.shape[1] / image.shape[0])
            resized = transform.resize(image[..., :3], (height, width), anti_aliasing=True)
            cache[(name, height)] = torch.from_numpy(resized.astype(np.float32))
        return cache[(name, height)].clone()

    return load


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
