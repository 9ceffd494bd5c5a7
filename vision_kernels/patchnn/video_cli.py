"""``vision-kernels vgpnn ...``: VGPNN applications on video files (mp4/mov/mkv/avi/webm, gif, or a
folder of frames; outputs in any of those, chosen by the output's suffix, no suffix = folder).

    vision-kernels vgpnn generate INPUT -o OUT.mp4 [--seed 0] [--count 1] [--frames T] [--size H W]
    vision-kernels vgpnn retarget INPUT -o OUT.mp4 [--frames T] [--size H W]
    vision-kernels vgpnn analogy  LAYOUT APPEARANCE -o OUT.mp4 [--motion-layout M.npy --motion-appearance M.npy]
    vision-kernels vgpnn inpaint  INPUT MASK -o OUT.mp4        (MASK: image, video or folder; white = fill in)

Every subcommand takes the VGPNN settings (--patch-size PT PH PW, --ratio, --temporal-ratio,
--coarsest, --coarsest-frames, --iterations, --alpha, --search, --reduction, ...), --max-side and
--max-frames/--start-frame to read only part of a large input, and --fps for the output (default:
the input's). The patch-search choice of --search auto is printed (logging at INFO). Bad inputs
end with a one-line error and exit status 2; outputs are written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from torch import Tensor

__all__ = ["add_parser", "main"]


def _add_settings(parser: argparse.ArgumentParser, *, alpha: float | None) -> None:
    group = parser.add_argument_group("VGPNN settings (defaults: the official code's)")
    group.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("PT", "PH", "PW"),
        help="patch size (default 3 7 7; 3 5 5 for videos above 7.5M voxels)",
    )
    group.add_argument("--ratio", type=float, default=1 / 0.85, help="spatial downscale per level (default 1/0.85)")
    group.add_argument("--temporal-ratio", type=float, default=1 / 0.85, help="temporal downscale per level")
    group.add_argument("--coarsest", type=int, default=15, help="shorter side of the coarsest level (default 15)")
    group.add_argument("--coarsest-frames", type=int, default=3, help="frames of the coarsest level (default 3)")
    group.add_argument("--iterations", type=int, default=None, help="PNN steps per level (default 5; analogy 2)")
    group.add_argument(
        "--alpha",
        type=float,
        default=alpha,
        help=f"completeness weight on the mean-squared-difference scale (default {alpha}; none = plain NN)",
    )
    group.add_argument("--no-alpha", action="store_true", help="plain nearest neighbours (no normalized score)")
    group.add_argument(
        "--noise", type=float, default=2.5, help="noise std per channel at the coarsest level (generate)"
    )
    group.add_argument(
        "--search",
        choices=("auto", "exact", "patchmatch", "faiss"),
        default="auto",
        help="patch search (default auto: exact while small, else PatchMatch; the choice is printed)",
    )
    group.add_argument("--pm-iterations", type=int, default=6, help="PatchMatch steps per search (default 6)")
    group.add_argument("--reduction", choices=("median", "mean", "gaussian"), default="median", help="voting")
    group.add_argument("--max-side", type=int, default=None, help="downscale frames whose longer side exceeds this")
    group.add_argument("--max-frames", type=int, default=None, help="read at most this many frames")
    group.add_argument("--start-frame", type=int, default=0, help="first frame to read (default 0)")
    group.add_argument("--fps", type=float, default=None, help="output frame rate (default: the input's)")
    group.add_argument("--quiet", action="store_true", help="no progress bar and no search log")


def _config(args: argparse.Namespace, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    from .video import video_config

    changes: dict[str, object] = {
        "pyramid_ratio": args.ratio,
        "temporal_ratio": args.temporal_ratio,
        "coarsest": args.coarsest,
        "coarsest_frames": args.coarsest_frames,
        "alpha": None if args.no_alpha else args.alpha,
        "noise_std": args.noise,
        "search": args.search,
        "patchmatch_iterations": args.pm_iterations,
        "reduction": args.reduction,
        "progress": False if args.quiet else None,
    }
    if args.patch_size is not None:
        changes["patch_size"] = tuple(args.patch_size)
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    elif args.vgpnn_command == "analogy":
        changes["iterations"] = 2
    return video_config(shape, **changes)


def _load(path: str, args: argparse.Namespace) -> tuple[Tensor, float]:
    from .video_io import read_video

    return read_video(path, start_frame=args.start_frame, max_frames=args.max_frames, max_side=args.max_side)


def _size(args: argparse.Namespace, video: Tensor) -> tuple[int, int, int] | None:
    if args.frames is None and args.size is None:
        return None
    frames = args.frames if args.frames is not None else video.shape[0]
    height, width = args.size if args.size is not None else video.shape[1:3]
    return (int(frames), int(height), int(width))


def _save(path: Path, video: Tensor, fps: float, started: float) -> None:
    from .video_io import write_video

    write_video(path, video, fps)
    t, h, w = video.shape[:3]
    print(
        f"vision-kernels vgpnn: wrote {path} ({t} frames of {w}x{h} at {fps:g} fps, "
        f"{time.perf_counter() - started:.1f} s)"
    )


def _numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


def _generate(args: argparse.Namespace) -> int:
    from .video import generate_video

    video, fps = _load(args.input, args)
    for i in range(args.count):
        started = time.perf_counter()
        sample = generate_video(video, seed=args.seed + i, size=_size(args, video), config=_config(args, video.shape))
        _save(_numbered(Path(args.output), i, args.count), sample, args.fps or fps, started)
    return 0


def _retarget(args: argparse.Namespace) -> int:
    from .video import retarget_video

    started = time.perf_counter()
    video, fps = _load(args.input, args)
    size = _size(args, video)
    if size is None:
        raise ValueError("vision-kernels vgpnn retarget: give --frames and/or --size")
    _save(
        Path(args.output),
        retarget_video(video, size, config=_config(args, video.shape), seed=args.seed),
        args.fps or fps,
        started,
    )
    return 0


def _analogy(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .video import analogy_video

    started = time.perf_counter()
    layout, fps = _load(args.layout, args)
    appearance, _ = _load(args.appearance, args)
    motion = None
    if (args.motion_layout is None) != (args.motion_appearance is None):
        raise ValueError("vision-kernels vgpnn analogy: give both --motion-layout and --motion-appearance, or neither")
    if args.motion_layout is not None:
        motion = tuple(
            torch.from_numpy(np.load(p).astype(np.float32)) for p in (args.motion_layout, args.motion_appearance)
        )
    result = analogy_video(
        layout,
        appearance,
        motion=motion,  # type: ignore[arg-type]
        motion_weight=args.motion_weight,
        config=_config(args, appearance.shape),
        seed=args.seed,
    )
    _save(Path(args.output), result, args.fps or fps, started)
    return 0


def _inpaint(args: argparse.Namespace) -> int:
    from .video import inpaint_video
    from .video_io import read_video_mask

    started = time.perf_counter()
    video, fps = _load(args.input, args)
    frames, height, width = video.shape[:3]
    mask = read_video_mask(args.mask, (frames, height, width))
    result = inpaint_video(
        video, mask, config=_config(args, video.shape), seed=args.seed, fit_coarsest=not args.fixed_coarsest
    )
    _save(Path(args.output), result, args.fps or fps, started)
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.quiet:
        logger = logging.getLogger("vision_kernels.patchnn")
        if not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("vision-kernels vgpnn: %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return int(args.vgpnn_handler(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"vision-kernels vgpnn {args.vgpnn_command}: error: {error}", file=sys.stderr)
        return 2


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``vgpnn`` and its subcommands to the ``vision-kernels`` parser."""
    vgpnn = subparsers.add_parser("vgpnn", help="VGPNN single-video generation and editing on video files")
    commands = vgpnn.add_subparsers(dest="vgpnn_command", required=True)

    def command(name: str, help_text: str, handler, alpha: float | None = None) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-o", "--output", required=True, help="output .mp4/.mov/.mkv/.avi/.webm/.gif, or a folder")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.set_defaults(handler=_run, vgpnn_handler=handler)
        return p

    def sizes(p: argparse.ArgumentParser) -> None:
        p.add_argument("--frames", type=int, default=None, help="output frames (default: the input's)")
        p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="output frame size (default: the input's)")

    p = command("generate", "random samples from one video", _generate)
    p.add_argument("input", help="source video (file, gif or folder of frames)")
    p.add_argument("--count", type=int, default=1, help="number of samples (seeds seed, seed+1, ...)")
    sizes(p)
    _add_settings(p, alpha=None)

    p = command("retarget", "make a video shorter/longer/narrower/wider keeping its patches", _retarget)
    p.add_argument("input", help="source video")
    sizes(p)
    _add_settings(p, alpha=None)

    p = command("analogy", "the motion/layout of one video drawn with the patches of another", _analogy)
    p.add_argument("layout", help="video giving the layout and motion (A)")
    p.add_argument("appearance", help="video giving the patches (B)")
    p.add_argument("--motion-layout", help=".npy [T, H, W] or [T, H, W, G] motion channel of A (e.g. flow magnitude)")
    p.add_argument("--motion-appearance", help=".npy motion channel of B (default: frame-difference magnitudes)")
    p.add_argument("--motion-weight", type=float, default=1.0, help="weight of the motion channel (default 1)")
    _add_settings(p, alpha=1.0)

    p = command("inpaint", "fill a space-time hole from the rest of the video", _inpaint)
    p.add_argument("input", help="video")
    p.add_argument("mask", help="mask image (all frames), mask video or folder; white (> 0.5) = fill in")
    p.add_argument(
        "--fixed-coarsest", action="store_true", help="keep --coarsest (default: fit it so the hole spans ~1 patch)"
    )
    _add_settings(p, alpha=1.0)
    return vgpnn


def main(argv: list[str] | None = None) -> int:
    """Run ``vision-kernels vgpnn ...`` with ``argv`` (for tests and ``python -m``)."""
    parser = argparse.ArgumentParser(prog="vision-kernels")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["vgpnn", *(argv or [])])
    return int(args.handler(args) or 0)
