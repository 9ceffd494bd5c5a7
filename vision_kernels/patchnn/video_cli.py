"""``vision-kernels vgpnn ...``: VGPNN applications on video files (mp4/mov/mkv/avi/webm, gif, or a
folder of frames; outputs in any of those, chosen by the output's suffix, no suffix = folder).

    vision-kernels vgpnn generate INPUT -o OUT.mp4 [--seed 0] [--count 1] [--frames T] [--size H W]
    vision-kernels vgpnn generate DIR_OR_GLOB [...] -o OUT_DIR [--count K] [--format mp4]     (batch)
    vision-kernels vgpnn retarget INPUT -o OUT.mp4 [--frames T] [--size H W]   (or DIR_OR_GLOB -o OUT_DIR)
    vision-kernels vgpnn analogy  LAYOUT APPEARANCE -o OUT.mp4 [--motion-layout M.npy --motion-appearance M.npy]
    vision-kernels vgpnn inpaint  INPUT MASK -o OUT.mp4        (MASK: image, video or folder; white = fill in)

Every subcommand takes the VGPNN settings (--patch-size PT PH PW, --ratio, --temporal-ratio,
--coarsest, --coarsest-frames, --iterations, --alpha, --noise, --initial-guess, --search, --reduction,
...; defaults from :func:`~vision_kernels.patchnn.video_config`), --max-side and --max-frames/--start-frame to read only
part of a large input, and --fps for the output (default: the input's). The patch-search choice of
--search auto is printed (logging at INFO). A folder holding video files (or a glob pattern, or
several inputs) is a batch: one output per input (and sample) in the output folder, existing
outputs skipped, the work split over torchrun ranks (:mod:`vision_kernels.patchnn.batch`); a folder
holding only frame images is one video. Mistakes end with one line naming the argument and exit
status 2, before any work; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from .._cli import (
    UsageError,
    existing_file,
    nonnegative_float,
    nonnegative_int,
    output_folder,
    positive_float,
    positive_int,
)
from .batch import Job, OneLineParser, expand_inputs, plan_jobs, run_jobs
from .cli import SETTINGS as GPNN_SETTINGS
from .cli import add_method_settings, at_least_one, run_batch, run_group, seed_value, settings_changes
from .video_io import IMAGE_SUFFIXES, VIDEO_SUFFIXES

__all__ = ["add_parser", "main"]

PROG = "vision-kernels vgpnn"
OUTPUT_SUFFIXES = (*VIDEO_SUFFIXES, ".gif")
# The applications' own settings (analogy_video, inpaint_video), applied before the command line's.
APP_CHANGES: dict[str, dict[str, object]] = {"analogy": {"alpha": 1.0, "iterations": 2}, "inpaint": {"alpha": 1.0}}
SETTINGS = {**GPNN_SETTINGS, "temporal_ratio": "temporal_ratio", "coarsest_frames": "coarsest_frames"}


def video_output(text: str) -> Path:
    """argparse type: a video file (.mp4, .gif, ...), or a path without suffix: a folder (of frames
    for one input, of outputs in batch mode), in an existing writable folder."""
    path = Path(text)
    suffix = path.suffix.lower()
    if path.is_dir() or not suffix:
        return output_folder(text)
    if suffix not in OUTPUT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"expected a file name ending in {', '.join(OUTPUT_SUFFIXES)} or a folder name without suffix, "
            f"got {text!r} (suffix {path.suffix!r})"
        )
    from .._cli import output_file

    return output_file(OUTPUT_SUFFIXES)(text)


def existing_video(text: str) -> Path:
    """argparse type: an existing video file or folder of frames."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return path


def _is_frame_folder(folder: Path) -> bool:
    """A folder is one video (its frames) unless it holds video files."""
    has_videos = any(p.suffix.lower() in OUTPUT_SUFFIXES for p in folder.iterdir() if p.is_file())
    return not has_videos and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file())


# ------------------------------------------------------------------ settings


def _base(command: str, shape: tuple[int, ...] | None = None) -> Any:
    from .video import video_config

    return video_config(shape, **APP_CHANGES.get(command, {}))


def _add_settings(parser: argparse.ArgumentParser, base: Any) -> None:
    from .video import LARGE_VIDEO_PATCH, LARGE_VIDEO_VOXELS

    large = " ".join(str(p) for p in LARGE_VIDEO_PATCH)
    group = parser.add_argument_group("VGPNN settings (defaults: video_config's, the official code's)")
    group.add_argument(
        "--patch-size",
        type=positive_int,
        nargs=3,
        metavar=("PT", "PH", "PW"),
        help=f"patch size (default {' '.join(map(str, base.patch))}; {large} above {LARGE_VIDEO_VOXELS:.3g} voxels)",
    )
    add_method_settings(group, base, noise="noise std per channel", reductions=("median", "mean", "gaussian"))
    temporal = [
        ("--temporal-ratio", at_least_one, "temporal downscale per level, >= 1", f"{base.temporal_ratio:.4g}"),
        ("--coarsest-frames", positive_int, "frames of the coarsest level", base.coarsest_frames),
    ]
    for flag, kind, text, default in temporal:
        group.add_argument(flag, type=kind, help=f"{text} (default {default})")
    group.add_argument("--max-side", type=positive_int, help="downscale frames whose longer side exceeds this")
    group.add_argument("--max-frames", type=positive_int, help="read at most this many frames")
    group.add_argument("--start-frame", type=nonnegative_int, default=0, help="first frame to read (default 0)")
    group.add_argument("--fps", type=positive_float, help="output frame rate, > 0 (default: the input's)")
    group.add_argument("--quiet", action="store_true", help="no progress bar and no search log")


def _config(args: argparse.Namespace, shape: tuple[int, ...] | None) -> Any:
    """video_config for ``shape`` with the application's and the command line's changes (with
    ``shape=None``: a check of the settings before any input is read)."""
    from .video import video_config

    changes = {**APP_CHANGES.get(args.vgpnn_command, {}), **settings_changes(args, SETTINGS)}
    if "patch_size" in changes:
        changes["patch_size"] = tuple(changes["patch_size"])  # type: ignore[arg-type]
    return video_config(shape, **changes)


# ------------------------------------------------------------------ inputs and outputs


def _load(path: Path | str, args: argparse.Namespace) -> tuple[Tensor, float]:
    from .video_io import read_video

    return read_video(path, start_frame=args.start_frame, max_frames=args.max_frames, max_side=args.max_side)


def _size(args: argparse.Namespace, video: Tensor) -> tuple[int, int, int] | None:
    if args.frames is None and args.size is None:
        return None
    frames = args.frames if args.frames is not None else video.shape[0]
    height, width = args.size if args.size is not None else video.shape[1:3]
    return (int(frames), int(height), int(width))


def _write(path: Path, video: Tensor, fps: float) -> str:
    from .video_io import write_video

    write_video(path, video, fps)
    t, h, w = video.shape[:3]
    return f"{t} frames of {w}x{h} at {fps:g} fps"


class _Cached:
    """The last video loaded, with its frame rate (the samples of one input reuse it)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.path: Path | None = None
        self.loaded: tuple[Tensor, float] | None = None

    def __call__(self, path: Path) -> tuple[Tensor, float]:
        if self.path != path or self.loaded is None:
            self.path, self.loaded = path, _load(path, self.args)
        return self.loaded


def _batch_jobs(args: argparse.Namespace, count: int) -> tuple[list[Job], bool]:
    sources, batch = expand_inputs(args.input, OUTPUT_SUFFIXES, argument="INPUT", folder_is_item=_is_frame_folder)
    if args.format is not None and not batch:
        raise UsageError("--format: applies to batch mode (several inputs); a single output names its own format")
    suffix = "" if args.format == "frames" else "." + (args.format or "mp4")
    if batch and args.output.suffix:
        raise UsageError(
            f"-o/--output: {len(sources)} inputs need an output folder (a path without suffix), "
            f"got {str(args.output)!r}"
        )
    return plan_jobs(sources, batch=batch, output=args.output, count=count, seed=args.seed, suffix=suffix), batch


# ------------------------------------------------------------------ subcommands


def _generate(args: argparse.Namespace) -> int:
    from .video import generate_video

    _config(args, None)  # the settings, checked before any input is read
    jobs, batch = _batch_jobs(args, args.count)
    load = _Cached(args)

    def work(job: Job) -> str:
        video, fps = load(job.source)
        sample = generate_video(video, seed=job.seed, size=_size(args, video), config=_config(args, video.shape))
        return _write(job.output, sample, args.fps or fps)

    return run_batch(args, jobs, batch, work, f"{PROG} {args.vgpnn_command}")


def _retarget(args: argparse.Namespace) -> int:
    from .video import retarget_video

    if args.frames is None and args.size is None:
        raise UsageError("--frames/--size: give --frames and/or --size (the output's length and frame size)")
    _config(args, None)
    jobs, batch = _batch_jobs(args, 1)
    load = _Cached(args)

    def work(job: Job) -> str:
        video, fps = load(job.source)
        size = _size(args, video)
        assert size is not None
        result = retarget_video(video, size, config=_config(args, video.shape), seed=job.seed)
        return _write(job.output, result, args.fps or fps)

    return run_batch(args, jobs, batch, work, f"{PROG} {args.vgpnn_command}")


def _single(args: argparse.Namespace, compute: Callable[[], tuple[Tensor, float]]) -> int:
    def work(job: Job) -> str:
        video, fps = compute()
        return _write(job.output, video, fps)

    return run_jobs([Job(Path("-"), 0, args.seed, args.output)], work, batch=False, overwrite=True, command=PROG)


def _motion(path: Path, argument: str) -> Tensor:
    import numpy as np
    import torch

    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UsageError(f"{argument}: cannot read {str(path)!r} as a .npy array: {error}") from error
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise UsageError(f"{argument}: {str(path)!r} must hold finite numbers, got dtype {array.dtype}")
    return torch.from_numpy(array.astype(np.float32))


def _analogy(args: argparse.Namespace) -> int:
    from .video import analogy_video

    if (args.motion_layout is None) != (args.motion_appearance is None):
        raise UsageError("--motion-layout/--motion-appearance: give both, or neither")
    _config(args, None)
    motion = None
    if args.motion_layout is not None:
        motion = (
            _motion(args.motion_layout, "--motion-layout"),
            _motion(args.motion_appearance, "--motion-appearance"),
        )
    layout, fps = _load(args.layout, args)
    appearance, _ = _load(args.appearance, args)
    config = _config(args, appearance.shape)

    def compute() -> tuple[Tensor, float]:
        result = analogy_video(
            layout, appearance, motion=motion, motion_weight=args.motion_weight, config=config, seed=args.seed
        )
        return result, args.fps or fps

    return _single(args, compute)


def _inpaint(args: argparse.Namespace) -> int:
    from .video import inpaint_video
    from .video_io import read_video_mask

    _config(args, None)
    video, fps = _load(args.input, args)
    frames, height, width = video.shape[:3]
    mask = read_video_mask(args.mask, (frames, height, width))
    if not bool(mask.any()):
        raise UsageError(f"MASK: {str(args.mask)!r} marks no voxel to fill in (white, > 0.5, = fill in)")
    if bool(mask.all()):
        raise UsageError(f"MASK: {str(args.mask)!r} marks every voxel; nothing is left to copy patches from")
    config = _config(args, video.shape)

    def compute() -> tuple[Tensor, float]:
        result = inpaint_video(video, mask, config=config, seed=args.seed, fit_coarsest=not args.fixed_coarsest)
        return result, args.fps or fps

    return _single(args, compute)


def _run(args: argparse.Namespace) -> int:
    if not args.quiet:
        logger = logging.getLogger("vision_kernels.patchnn")
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("vision-kernels vgpnn: %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return int(args.vgpnn_handler(args) or 0)


# ------------------------------------------------------------------ parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``vgpnn`` and its subcommands to the ``vision-kernels`` parser."""
    vgpnn = subparsers.add_parser("vgpnn", help="VGPNN single-video generation and editing on video files")
    commands = vgpnn.add_subparsers(dest="vgpnn_command", required=True, parser_class=OneLineParser)
    suffixes = ", ".join(OUTPUT_SUFFIXES)

    def command(name: str, help_text: str, handler: Callable[[argparse.Namespace], int], *, batch: bool = False):  # type: ignore[no-untyped-def]
        p = commands.add_parser(name, help=help_text, description=help_text)
        where = "; in batch mode the folder to write into" if batch else ""
        p.add_argument(
            "-o", "--output", required=True, type=video_output, help=f"output {suffixes}, or a folder of frames{where}"
        )
        if batch:
            p.add_argument(
                "--format",
                choices=[*(s[1:] for s in OUTPUT_SUFFIXES), "frames"],
                help="batch mode: format of the outputs written into the folder (default mp4)",
            )
            p.add_argument("--overwrite", action="store_true", help="batch mode: redo outputs that exist")
        p.add_argument("--seed", type=seed_value, default=0, help="random seed, >= 0 (default 0)")
        p.set_defaults(handler=_run, vgpnn_handler=handler)
        return p

    def sizes(p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=positive_int, default=None, help="output frames (default: the input's)")
        p.add_argument(
            "--size", type=positive_int, nargs=2, metavar=("H", "W"), help="output frame size (default: the input's)"
        )

    inputs_help = "source video(s): files, frame folders, folders of videos, or quoted glob patterns"
    p = command("generate", "random samples from one video (or each of many)", _generate, batch=True)
    p.add_argument("input", nargs="+", help=inputs_help)
    p.add_argument("--count", type=positive_int, default=1, help="samples per input (seeds seed, seed+1, ...)")
    sizes(p)
    _add_settings(p, _base("generate"))

    p = command("retarget", "make a video shorter/longer/narrower/wider keeping its patches", _retarget, batch=True)
    p.add_argument("input", nargs="+", help=inputs_help)
    sizes(p)
    _add_settings(p, _base("retarget"))

    p = command("analogy", "the motion/layout of one video drawn with the patches of another", _analogy)
    p.add_argument("layout", type=existing_video, help="video giving the layout and motion (A)")
    p.add_argument("appearance", type=existing_video, help="video giving the patches (B)")
    p.add_argument(
        "--motion-layout",
        type=existing_file,
        help=".npy [T, H, W] or [T, H, W, G] motion channel of A (e.g. flow magnitude)",
    )
    p.add_argument(
        "--motion-appearance", type=existing_file, help=".npy motion channel of B (default: frame differences)"
    )
    p.add_argument(
        "--motion-weight", type=nonnegative_float, default=1.0, help="weight of the motion channel, >= 0 (default 1)"
    )
    _add_settings(p, _base("analogy"))

    p = command("inpaint", "fill a space-time hole from the rest of the video", _inpaint)
    p.add_argument("input", type=existing_video, help="video")
    p.add_argument(
        "mask", type=existing_video, help="mask image (all frames), mask video or folder; white (> 0.5) = fill in"
    )
    p.add_argument(
        "--fixed-coarsest", action="store_true", help="keep --coarsest (default: fit it so the hole spans ~1 patch)"
    )
    _add_settings(p, _base("inpaint"))
    return vgpnn


def main(argv: list[str] | None = None) -> int:
    """Run ``vision-kernels vgpnn ...`` with ``argv`` (for tests and ``python -m``)."""
    return run_group(add_parser, "vgpnn", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
