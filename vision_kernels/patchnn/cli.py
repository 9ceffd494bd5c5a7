"""``vision-kernels gpnn ...``: GPNN applications on image files.

    vision-kernels gpnn generate  INPUT -o OUT.png [--seed 0] [--count 1] [--size H W]
    vision-kernels gpnn retarget  INPUT -o OUT.png --size H W
    vision-kernels gpnn analogy   CONTENT STRUCTURE -o OUT.png
    vision-kernels gpnn inpaint   INPUT MASK -o OUT.png          (MASK: white = fill in)
    vision-kernels gpnn collage   INPUT INPUT [...] -o OUT.png [--size H W]
    vision-kernels gpnn edit      SOURCE EDITED -o OUT.png

Every subcommand takes the GPNN settings (--patch-size, --ratio, --coarsest, --iterations,
--alpha, --search, ...) and --max-side to downscale large inputs first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from torch import Tensor

__all__ = ["add_parser", "main"]


def _add_settings(parser: argparse.ArgumentParser, *, alpha: float | None = 0.005) -> None:
    group = parser.add_argument_group("GPNN settings")
    group.add_argument("--patch-size", type=int, default=7, help="patch side in pixels (default 7)")
    group.add_argument("--ratio", type=float, default=4 / 3, help="pyramid downscale ratio (default 4/3)")
    group.add_argument("--coarsest", type=int, default=14, help="shorter side of the coarsest level (default 14)")
    group.add_argument("--iterations", type=int, default=10, help="PNN steps per pyramid level (default 10)")
    group.add_argument(
        "--alpha",
        type=float,
        default=alpha,
        help=f"completeness weight on the mean-squared-difference scale (default {alpha}); see --no-alpha",
    )
    group.add_argument("--no-alpha", action="store_true", help="plain nearest neighbours (no normalized score)")
    group.add_argument("--noise", type=float, default=0.75, help="noise std at the coarsest level (generate)")
    group.add_argument(
        "--search",
        choices=("exact", "auto", "patchmatch", "faiss"),
        default="exact",
        help="patch search (default exact; auto: exact on small levels, PatchMatch on large ones)",
    )
    group.add_argument("--pm-iterations", type=int, default=6, help="PatchMatch steps per search (default 6)")
    group.add_argument("--reduction", choices=("mean", "gaussian", "median"), default="mean", help="voting")
    group.add_argument("--max-side", type=int, default=None, help="downscale inputs whose longer side exceeds this")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace):
    from .gpnn import GPNNConfig

    return GPNNConfig(
        patch_size=args.patch_size,
        pyramid_ratio=args.ratio,
        coarsest=args.coarsest,
        iterations=args.iterations,
        alpha=None if args.no_alpha else args.alpha,
        noise_std=args.noise,
        search=args.search,
        patchmatch_iterations=args.pm_iterations,
        reduction=args.reduction,
        progress=False if args.quiet else None,
    )


def _load(path: str, max_side: int | None) -> Tensor:
    from .image_io import read_image
    from .pyramid import resize

    image = read_image(path, channels=3)
    if max_side is not None and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (1, max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        image = resize(image[None], size)[0]
    return image


def _save(path: Path, image: Tensor, started: float) -> None:
    from .image_io import write_image

    write_image(path, image)
    print(
        f"vision-kernels gpnn: wrote {path} ({image.shape[1]}x{image.shape[0]}, {time.perf_counter() - started:.1f} s)"
    )


def _numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}_{index}{path.suffix}")


def _generate(args: argparse.Namespace) -> int:
    from .apps import generate

    image = _load(args.input, args.max_side)
    for i in range(args.count):
        started = time.perf_counter()
        sample = generate(image, seed=args.seed + i, config=_config(args), size=args.size)
        _save(_numbered(Path(args.output), i, args.count), sample, started)
    return 0


def _retarget(args: argparse.Namespace) -> int:
    from .apps import retarget

    started = time.perf_counter()
    image = _load(args.input, args.max_side)
    _save(Path(args.output), retarget(image, args.size, config=_config(args), seed=args.seed), started)
    return 0


def _analogy(args: argparse.Namespace) -> int:
    from .apps import analogy

    started = time.perf_counter()
    content, structure = _load(args.content, args.max_side), _load(args.structure, args.max_side)
    _save(Path(args.output), analogy(content, structure, config=_config(args), seed=args.seed), started)
    return 0


def _inpaint(args: argparse.Namespace) -> int:
    from .apps import inpaint
    from .image_io import read_mask
    from .pyramid import resize

    started = time.perf_counter()
    image = _load(args.input, args.max_side)
    hole = read_mask(args.mask)
    if tuple(hole.shape) != tuple(image.shape[:2]):
        hole = resize(hole.float()[None, ..., None], (1, *image.shape[:2]))[0, ..., 0] > 0.5
    result = inpaint(image, hole, config=_config(args), seed=args.seed, fit_coarsest=not args.fixed_coarsest)
    _save(Path(args.output), result, started)
    return 0


def _collage(args: argparse.Namespace) -> int:
    from .apps import collage

    started = time.perf_counter()
    images = [_load(p, args.max_side) for p in args.inputs]
    _save(Path(args.output), collage(images, size=args.size, config=_config(args), seed=args.seed), started)
    return 0


def _edit(args: argparse.Namespace) -> int:
    from .apps import edit

    started = time.perf_counter()
    source, edited = _load(args.source, args.max_side), _load(args.edited, args.max_side)
    _save(Path(args.output), edit(source, edited, config=_config(args), seed=args.seed), started)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``gpnn`` and its subcommands to the ``vision-kernels`` parser."""
    gpnn = subparsers.add_parser("gpnn", help="GPNN single-image generation and editing on image files")
    commands = gpnn.add_subparsers(dest="gpnn_command", required=True)

    def command(name: str, help_text: str, handler) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-o", "--output", required=True, help="output image file (format from the extension)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.set_defaults(handler=handler)
        return p

    p = command("generate", "random samples from one image", _generate)
    p.add_argument("input", help="source image")
    p.add_argument("--count", type=int, default=1, help="number of samples (seeds seed, seed+1, ...)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="output size (default: the source's)")
    _add_settings(p)

    p = command("retarget", "resize to any shape keeping the image's patches", _retarget)
    p.add_argument("input", help="source image")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), required=True, help="output size")
    _add_settings(p)

    p = command("analogy", "the structure of one image drawn with the patches of another", _analogy)
    p.add_argument("content", help="image giving the patches (A)")
    p.add_argument("structure", help="image giving the layout (B)")
    _add_settings(p)

    p = command("inpaint", "fill a masked region from the rest of the image", _inpaint)
    p.add_argument("input", help="image")
    p.add_argument("mask", help="mask image, white (> 0.5) where pixels are to be filled in")
    p.add_argument(
        "--fixed-coarsest", action="store_true", help="keep --coarsest (default: fit it so the hole spans ~1 patch)"
    )
    _add_settings(p, alpha=1.0)

    p = command("collage", "a seamless collage of several images", _collage)
    p.add_argument("inputs", nargs="+", help="source images, placed left to right")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="output size (default: side by side)")
    _add_settings(p)

    p = command("edit", "make a roughly edited image coherent with the original's patches", _edit)
    p.add_argument("source", help="original image")
    p.add_argument("edited", help="edited version (objects moved, copied or removed)")
    _add_settings(p)
    return gpnn


def main(argv: list[str] | None = None) -> int:
    """Run ``vision-kernels gpnn ...`` with ``argv`` (for tests and ``python -m``)."""
    parser = argparse.ArgumentParser(prog="vision-kernels")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gpnn", *(argv or [])])
    return int(args.handler(args) or 0)
