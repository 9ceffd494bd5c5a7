"""Fixtures of the attention_decomp tests. The random-weight CLIP models are in ../conftest.py (shared with
second_order/); here: synthetic image sources for the dataset-run tests (class folders, list files,
webdataset shards)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def synthetic_image(seed: int, size: int = 40) -> Image.Image:
    """A random RGB image whose mean color depends on ``seed % 3`` (so classes differ a little)."""
    rng = np.random.default_rng(seed)
    base = np.zeros(3)
    base[seed % 3] = 120
    pixels = np.clip(base + rng.integers(0, 136, size=(size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_class_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """``root/class_k/img_j.png`` images (deterministic content)."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(classes):
        folder = root / f"class_{k}"
        folder.mkdir(exist_ok=True)
        for j in range(per_class):
            synthetic_image(1000 * k + j, size).save(folder / f"img_{j:03d}.png")
    return root


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class SmallTransform:
    """PIL image -> ``[3, 16, 16]`` float tensor in [0, 1] (picklable, for DataLoader workers)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class Synthetic:
    """The helpers above, handed to tests by the ``synth`` fixture (test modules cannot import conftest)."""

    image = staticmethod(synthetic_image)
    class_folder = staticmethod(make_class_folder)
    png_bytes = staticmethod(png_bytes)
    SmallTransform = SmallTransform


@pytest.fixture(scope="session")
def synth() -> type[Synthetic]:
    return Synthetic
