"""Fixtures of the patch_nn family's tests: small skimage sample images as float32 [H, W, 3] tensors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch


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
