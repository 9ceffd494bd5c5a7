"""Reading and writing the images GPNN works on: float32 ``[H, W, C]`` tensors in [0, 1].

Any format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, ...) is accepted; 16-bit images keep their
precision, grayscale stays one channel unless ``channels=3`` asks for RGB, and an alpha channel is
dropped. Masks are images whose nonzero (or bright, > 0.5) pixels are True.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_image", "write_image", "read_mask", "write_mask"]


def read_image(path: str | Path, *, channels: int | None = None) -> Tensor:
    """Image file -> float32 ``[H, W, C]`` in [0, 1] (C = 1 or 3, or ``channels`` if given)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float64) / (65535.0 if image.mode.startswith("I;16") else 2**31 - 1)
            array = array[..., None]
        else:
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB" if image.mode not in ("1", "LA") else "L")
            array = np.asarray(image, dtype=np.float64) / 255.0
            if array.ndim == 2:
                array = array[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if channels is not None:
        if channels not in (1, 3):
            raise ValueError(f"vision_kernels.patchnn.read_image: argument 'channels' must be 1 or 3, got {channels}")
        if tensor.shape[-1] == 1 and channels == 3:
            tensor = tensor.expand(*tensor.shape[:2], 3).contiguous()
        elif tensor.shape[-1] == 3 and channels == 1:
            tensor = (tensor @ torch.tensor([0.299, 0.587, 0.114]))[..., None]
    return tensor


def write_image(path: str | Path, image: Tensor | np.ndarray) -> Path:
    """Write ``[H, W, C]`` (C = 1 or 3) values in [0, 1] (clipped) as an 8-bit image; returns the path."""
    from PIL import Image

    array = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"vision_kernels.patchnn.write_image: argument 'image' must have shape [H, W, 1 or 3], got {array.shape}"
        )
    pixels = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)
    return path


def read_mask(path: str | Path) -> Tensor:
    """Mask image -> bool ``[H, W]``: True where the (gray) value is above 0.5."""
    return read_image(path, channels=1)[..., 0] > 0.5


def write_mask(path: str | Path, mask: Tensor) -> Path:
    """Write a bool ``[H, W]`` mask as a black/white image."""
    return write_image(path, mask.float()[..., None])
