"""Reading and writing the images GPNN works on: float32 ``[H, W, C]`` tensors in [0, 1].

Any format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, ...) is accepted; 16-bit images keep their
precision, grayscale stays one channel unless ``channels=3`` asks for RGB, and an alpha channel is
dropped. Masks are images whose nonzero (or bright, > 0.5) pixels are True.

Errors name the function and the file: a missing file is a ``FileNotFoundError``, a folder an
``IsADirectoryError``, a file Pillow cannot decode (corrupt, truncated, not an image) a ``ValueError``.
:func:`write_image` refuses NaN/Inf pixels and unknown suffixes before writing, and saves
atomically (:func:`vision_kernels._files.atomic_path`): a killed save leaves the previous file intact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._files import atomic_path

__all__ = ["read_image", "write_image", "read_mask", "write_mask", "IMAGE_SUFFIXES", "IMAGE_WRITE_SUFFIXES"]

# Suffixes listed as images when a folder of inputs is expanded (anything Pillow reads is accepted
# when named explicitly).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Formats write_image produces (8-bit gray or RGB); the format follows the suffix.
IMAGE_WRITE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _where(function: str) -> str:
    return f"vision_kernels.patchnn.{function}"


def _check_readable(path: Path, function: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{_where(function)}: no such file: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{_where(function)}: expected an image file, got the folder {str(path)!r}")


def _decode(path: Path, function: str) -> np.ndarray:
    """The pixels of an image file as float64 ``[H, W, C]`` in [0, 1] (C = 1 or 3)."""
    from PIL import Image, UnidentifiedImageError

    _check_readable(path, function)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                scale = 65535.0 if image.mode.startswith("I;16") else 2**31 - 1
                return (np.asarray(image, dtype=np.float64) / scale)[..., None]
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB" if image.mode not in ("1", "LA") else "L")
            array = np.asarray(image, dtype=np.float64) / 255.0
    except PermissionError as error:
        raise PermissionError(f"{_where(function)}: cannot read {str(path)!r} (permission denied)") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, UnidentifiedImageError):
            reason = "not an image file Pillow can decode"
        raise ValueError(f"{_where(function)}: cannot read {str(path)!r} as an image: {reason}") from error
    return array[..., None] if array.ndim == 2 else array


def read_image(path: str | Path, *, channels: int | None = None) -> Tensor:
    """Image file -> float32 ``[H, W, C]`` in [0, 1] (C = 1 or 3, or ``channels`` if given).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: ``channels`` is not 1, 3 or None; the file is not an image Pillow decodes
            (corrupt, truncated, another format), naming the file.
    """
    if channels is not None and channels not in (1, 3):
        raise ValueError(f"{_where('read_image')}: argument 'channels' must be 1, 3 or None, got {channels!r}")
    tensor = torch.from_numpy(np.ascontiguousarray(_decode(Path(path), "read_image"), dtype=np.float32))
    if channels is not None:
        if tensor.shape[-1] == 1 and channels == 3:
            tensor = tensor.expand(*tensor.shape[:2], 3).contiguous()
        elif tensor.shape[-1] == 3 and channels == 1:
            tensor = (tensor @ torch.tensor([0.299, 0.587, 0.114]))[..., None]
    return tensor


def write_image(path: str | Path, image: Tensor | np.ndarray) -> Path:
    """Write ``[H, W, C]`` (C = 1 or 3) values in [0, 1] (clipped) as an 8-bit image; returns the path.

    The format follows the suffix (one of :data:`IMAGE_WRITE_SUFFIXES`); missing parent folders
    are created. The file is written beside ``path`` and renamed over it once complete and
    fsync'ed, so an interrupted save never leaves a truncated file under ``path``.

    Raises:
        ValueError: wrong shape, NaN or Inf values, or an unsupported suffix (checked before writing).
    """
    from PIL import Image

    where = _where("write_image")
    path = Path(path)
    if path.suffix.lower() not in IMAGE_WRITE_SUFFIXES:
        raise ValueError(
            f"{where}: argument 'path' must end in one of {', '.join(IMAGE_WRITE_SUFFIXES)}, got {str(path)!r}"
        )
    array = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3 or array.shape[-1] not in (1, 3) or min(array.shape[:2]) < 1:
        raise ValueError(f"{where}: argument 'image' must have shape [H, W, 1 or 3] with H, W >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: argument 'image' holds NaN or Inf values ({int((~np.isfinite(array)).sum())})")
    pixels = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, function=where) as temporary:
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(temporary)
    return path


def read_mask(path: str | Path) -> Tensor:
    """Mask image -> bool ``[H, W]``: True where the (gray) value is above 0.5."""
    return read_image(path, channels=1)[..., 0] > 0.5


def write_mask(path: str | Path, mask: Tensor) -> Path:
    """Write a bool ``[H, W]`` mask as a black/white image."""
    return write_image(path, mask.float()[..., None])
