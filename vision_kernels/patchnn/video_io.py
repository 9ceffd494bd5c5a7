"""Reading and writing the videos VGPNN works on: float32 ``[T, H, W, C]`` tensors in [0, 1] and a
frame rate.

Inputs: video containers PyAV decodes (mp4, mov, mkv, avi, webm, ...), animated GIFs (Pillow),
and folders of frame images (sorted by the numbers in their names: ``1.png, 2.png, ..., 10.png``).
Frames are decoded one at a time as uint8 and converted into one preallocated float32 tensor, so a
video is never held as float64. A single image (PNG, JPEG, ...) is not a video: :func:`read_video`
refuses it. Outputs are written atomically (:mod:`vision_kernels._files`): to a temporary name in
the target folder first, fsync'ed and renamed onto the target only once complete (a folder of
frames is swapped in whole), so an interrupted, failed or killed write never leaves a file that
looks like a finished result, and the temporaries of killed writes are removed by the next save.
NaN/Inf frames are refused before anything is written. PyAV (the ``[video]`` extra) is needed for
video containers only; GIFs and frame folders use Pillow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._files import atomic_folder, atomic_path
from .._optional import MissingDependencyError, require

__all__ = [
    "read_video",
    "write_video",
    "read_video_mask",
    "write_frame_strip",
    "frames_to_uint8",
    "VIDEO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "DEFAULT_FPS",
]

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 10.0  # frame folders carry no rate; VGPNN's official code writes 10 fps
_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".m4v": "libx264", ".avi": "mpeg4"}
_CODECS[".webm"] = "libvpx-vp9"


def _fail(function: str, path: Path, reason: str) -> ValueError:
    return ValueError(f"vision_kernels.patchnn.{function}: cannot read {str(path)!r} as a video: {reason}")


def _natural_key(path: Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name))


def _frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=_natural_key)


def _decode_folder(folder: Path) -> tuple[Iterator[np.ndarray], float | None]:
    from PIL import Image

    def frames() -> Iterator[np.ndarray]:
        for file in _frame_files(folder):
            with Image.open(file) as image:
                yield np.asarray(image.convert("RGB"))

    return frames(), None


def _decode_gif(path: Path) -> tuple[Iterator[np.ndarray], float | None]:
    from PIL import Image, ImageSequence

    image = Image.open(path)
    duration = image.info.get("duration") or 0

    def frames() -> Iterator[np.ndarray]:
        with image:
            for frame in ImageSequence.Iterator(image):
                yield np.asarray(frame.convert("RGB"))

    return frames(), (1000.0 / duration if duration else None)


# FFmpeg demuxers of still images: a PNG/JPEG opened by PyAV is a one-frame "video".
_STILL_IMAGE_DEMUXERS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "gif_pipe")


def _still_image(function: str, path: Path) -> ValueError:
    return _fail(
        function,
        path,
        "it is a single image, not a video; give a video file, an animated GIF or a folder of frame images",
    )


def _decode_av(path: Path) -> tuple[Iterator[np.ndarray], float | None]:
    av = require("av", feature="vision_kernels.patchnn.read_video")

    container = av.open(str(path))
    demuxers = set(str(getattr(container.format, "name", "")).split(","))
    if demuxers & set(_STILL_IMAGE_DEMUXERS):
        container.close()
        raise _StillImage
    if not container.streams.video:
        container.close()
        raise ValueError("it has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate

    def frames() -> Iterator[np.ndarray]:
        with container:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")

    return frames(), (float(rate) if rate else None)


class _StillImage(Exception):
    """Raised by a decoder that finds a still image where a video was expected."""


def _decoder(path: Path, function: str) -> Callable[[Path], tuple[Iterator[np.ndarray], float | None]]:
    if not path.exists():
        raise FileNotFoundError(f"vision_kernels.patchnn.{function}: no such file or folder: {str(path)!r}")
    if path.is_dir():
        return _decode_folder
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise _still_image(function, path)
    if path.suffix.lower() == ".gif":
        return _decode_gif
    return _decode_av


def read_video(
    path: str | Path,
    *,
    start_frame: int = 0,
    max_frames: int | None = None,
    max_side: int | None = None,
    fps: float | None = None,
) -> tuple[Tensor, float]:
    """Video file, GIF or folder of frames -> ``(frames, fps)``: float32 ``[T, H, W, 3]`` in [0, 1].

    Args:
        path: an mp4/mov/mkv/avi/webm file (PyAV), a .gif (Pillow), or a folder of frame images
            sorted by the numbers in their names.
        start_frame: first frame to keep (0-based).
        max_frames: keep at most this many frames.
        max_side: downscale every frame (antialiased) so that its longer side is at most this.
        fps: frame rate to report (default: the file's; :data:`DEFAULT_FPS` for folders and files
            without one).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is a single image (PNG, JPEG, ...), cannot be decoded, holds no video
            stream, or yields no frame (after ``start_frame``), or the frames change size.
        MissingDependencyError: a video container without PyAV installed (``[video]`` extra).
    """
    from .pyramid import resize

    function = "read_video"
    path = Path(path)
    if start_frame < 0 or (max_frames is not None and max_frames < 1) or (max_side is not None and max_side < 1):
        raise ValueError(
            f"vision_kernels.patchnn.{function}: need start_frame >= 0, max_frames >= 1, max_side >= 1, got "
            f"{start_frame}, {max_frames}, {max_side}"
        )
    decode = _decoder(path, function)
    kept: list[np.ndarray] = []  # uint8 [H, W, 3] frames
    try:
        frames, file_fps = decode(path)
        for i, frame in enumerate(frames):
            if i < start_frame:
                continue
            if max_frames is not None and len(kept) >= max_frames:
                break
            if kept and frame.shape != kept[0].shape:
                raise ValueError(f"frame {i} has shape {frame.shape}, the first frame {kept[0].shape}")
            kept.append(np.array(frame, dtype=np.uint8, order="C"))  # a writable copy
    except _StillImage:
        raise _still_image(function, path) from None
    except MissingDependencyError:
        raise
    except (ValueError, OSError, EOFError) as error:
        raise _fail(function, path, str(error) or type(error).__name__) from error
    except Exception as error:  # PyAV / Pillow decoder errors have many types
        if type(error).__module__.split(".")[0] not in ("av", "PIL"):
            raise
        raise _fail(function, path, str(error) or type(error).__name__) from error
    if not kept:
        where = f" from frame {start_frame} on" if start_frame else ""
        raise _fail(function, path, f"it has zero frames{where}")
    height, width = kept[0].shape[:2]
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
    video = torch.empty((len(kept), height, width, 3), dtype=torch.float32)  # [T, H, W, 3]
    for t, frame in enumerate(kept):
        plane = torch.from_numpy(frame).to(torch.float32).div_(255.0)  # [H0, W0, 3]
        video[t] = plane if plane.shape[:2] == (height, width) else resize(plane[None], (1, height, width))[0]
        kept[t] = None  # type: ignore[call-overload]  # free the uint8 frame
    rate = float(fps) if fps is not None else (file_fps if file_fps and math.isfinite(file_fps) else DEFAULT_FPS)
    return video.clamp_(0.0, 1.0), rate


def frames_to_uint8(video: Tensor | np.ndarray, function: str = "write_video") -> Iterator[np.ndarray]:
    """Yield the frames of ``[T, H, W, C]`` (C = 1 or 3; float in [0, 1], clipped, or uint8) as uint8
    ``[H, W, 3]`` arrays, one at a time (no full-video copy)."""
    array = video.detach().cpu() if isinstance(video, Tensor) else torch.from_numpy(np.asarray(video))
    if array.dim() != 4 or array.shape[-1] not in (1, 3) or min(array.shape[:3]) < 1:
        raise ValueError(
            f"vision_kernels.patchnn.{function}: argument 'video' must have shape [T, H, W, 1 or 3] with T, H, W >= 1, "
            f"got {tuple(array.shape)}"
        )
    for frame in array:
        if frame.dtype == torch.uint8:
            pixels = frame.numpy()
        else:
            pixels = frame.float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).numpy()
        yield np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels


def _write_av(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    av = require("av", feature="vision_kernels.patchnn.write_video")

    codec = _CODECS.get(path.suffix.lower(), "libx264")
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format={".m4v": "mp4"}.get(path.suffix.lower())) as container:
        stream = None
        for pixels in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                # 4:2:0 chroma needs even sides: odd frames are padded by repeating the last row/column.
                stream.height, stream.width = (
                    pixels.shape[0] + pixels.shape[0] % 2,
                    pixels.shape[1] + pixels.shape[1] % 2,
                )
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": "18", "preset": "medium"}
            if (pixels.shape[0], pixels.shape[1]) != (stream.height, stream.width):
                pixels = np.pad(
                    pixels, ((0, stream.height - pixels.shape[0]), (0, stream.width - pixels.shape[1]), (0, 0)), "edge"
                )
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def _write_gif(path: Path, frames: Iterator[np.ndarray], fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(pixels) for pixels in frames]
    duration = max(20, round(1000.0 / fps / 10) * 10)  # GIF stores 1/100 s; most viewers clamp below 20 ms
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)


def _write_folder(folder: Path, frames: Iterator[np.ndarray], count: int) -> None:
    from PIL import Image

    digits = max(5, len(str(count)))
    for t, pixels in enumerate(frames):
        Image.fromarray(pixels).save(folder / f"{t + 1:0{digits}d}.png")


def write_video(path: str | Path, video: Tensor | np.ndarray, fps: float = DEFAULT_FPS) -> Path:
    """Write ``[T, H, W, C]`` (C = 1 or 3; floats in [0, 1], clipped, or uint8) atomically; returns the path.

    The format follows ``path``: ``.mp4/.mov/.mkv/.m4v`` (H.264, yuv420p, crf 18; odd sides are padded
    by one repeated row/column), ``.avi`` (MPEG-4), ``.webm`` (VP9), ``.gif`` (Pillow, looping;
    GIF stores frame times in 1/100 s), or no suffix: a folder of numbered PNG frames (an existing
    folder is replaced as a whole). Everything is first written under a hidden temporary name in
    the target's folder, fsync'ed, and renamed onto ``path`` only when complete; on error the
    temporary is removed, and temporaries of killed writes are removed by the next save there.

    Raises:
        ValueError: bad shape, NaN/Inf values, ``fps`` not a positive number, unsupported suffix
            (all checked before anything is written).
    """
    function = "write_video"
    where = f"vision_kernels.patchnn.{function}"
    path = Path(path)
    if not (isinstance(fps, (int, float)) and fps > 0 and math.isfinite(fps)):
        raise ValueError(f"{where}: argument 'fps' must be a positive number, got {fps}")
    suffix = path.suffix.lower()
    if suffix and suffix != ".gif" and suffix not in VIDEO_SUFFIXES:
        raise ValueError(
            f"{where}: unsupported output {str(path)!r}; use one of "
            f"{', '.join(VIDEO_SUFFIXES + ('.gif',))} or a folder name without suffix"
        )
    array = video.detach() if isinstance(video, Tensor) else torch.from_numpy(np.asarray(video))
    if array.is_floating_point() and array.dim() == 4 and not bool(torch.isfinite(array).all()):
        raise ValueError(f"{where}: argument 'video' holds NaN or Inf values")
    count = int(array.shape[0]) if array.dim() >= 1 else 0
    frames = frames_to_uint8(array, function)
    first = next(frames)  # validates the shape before anything is created

    def all_frames() -> Iterator[np.ndarray]:
        yield first
        yield from frames

    path.parent.mkdir(parents=True, exist_ok=True)
    if not suffix:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{where}: {str(path)!r} exists and is not a folder")
        with atomic_folder(path, function=where) as temporary:
            _write_folder(temporary, all_frames(), count)
    else:
        with atomic_path(path, function=where) as temporary:
            (_write_gif if suffix == ".gif" else _write_av)(temporary, all_frames(), fps)
    return path


def read_video_mask(path: str | Path, shape: tuple[int, int, int] | None = None) -> Tensor:
    """Mask video, folder of mask frames, or single mask image -> bool ``[T, H, W]`` (True where the
    gray value is above 0.5). A single image gives one frame (use it for every frame by passing
    ``shape``); with ``shape`` = ``(T, H, W)`` a mask of another spatial size is resized (nearest
    decision at 0.5) and a one-frame mask is repeated over ``T`` frames."""
    from .image_io import read_mask
    from .pyramid import resize

    path = Path(path)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        mask = read_mask(path)[None]  # [1, H, W]
    else:
        frames, _ = read_video(path)
        mask = frames.mean(dim=-1) > 0.5  # [T, H, W]
    if shape is not None:
        frames_wanted, height, width = (int(s) for s in shape)
        if mask.shape[0] not in (1, frames_wanted):
            raise ValueError(
                f"vision_kernels.patchnn.read_video_mask: mask {str(path)!r} has {mask.shape[0]} frames, the video "
                f"{frames_wanted} (give one mask image for all frames, or one mask frame per video frame)"
            )
        if tuple(mask.shape[1:]) != (height, width):
            mask = resize(mask.float()[..., None], (mask.shape[0], height, width))[..., 0] > 0.5
        if mask.shape[0] == 1:
            mask = mask.expand(frames_wanted, height, width).contiguous()
    return mask


def write_frame_strip(path: str | Path, video: Tensor, *, count: int = 6, gap: int = 2) -> Path:
    """Write ``count`` evenly spaced frames of ``[T, H, W, C]`` side by side as one PNG (white gaps)."""
    from .image_io import write_image

    frames = video.detach().cpu().float()
    if frames.dim() != 4:
        raise ValueError(
            f"vision_kernels.patchnn.write_frame_strip: argument 'video' must be [T, H, W, C], got "
            f"{tuple(frames.shape)}"
        )
    picks = sorted({round(i * (frames.shape[0] - 1) / max(1, count - 1)) for i in range(min(count, frames.shape[0]))})
    height, width, channels = frames.shape[1:]
    strip = torch.ones(height, len(picks) * (width + gap) - gap, channels)
    for i, t in enumerate(picks):
        strip[:, i * (width + gap) : i * (width + gap) + width] = frames[t]
    return write_image(path, strip)
