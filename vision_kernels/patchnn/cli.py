"""``vision-kernels gpnn ...``: GPNN applications on image files.

    vision-kernels gpnn generate  INPUT -o OUT.png [--seed 0] [--count 1] [--size H W]
    vision-kernels gpnn generate  DIR_OR_GLOB [...] -o OUT_DIR/ [--count K] [--format png]   (batch)
    vision-kernels gpnn retarget  INPUT -o OUT.png --size H W      (or DIR_OR_GLOB -o OUT_DIR/)
    vision-kernels gpnn analogy   CONTENT STRUCTURE -o OUT.png
    vision-kernels gpnn inpaint   INPUT MASK -o OUT.png          (MASK: white = fill in)
    vision-kernels gpnn collage   INPUT INPUT [...] -o OUT.png [--size H W]
    vision-kernels gpnn edit      SOURCE EDITED -o OUT.png

Every subcommand takes the GPNN settings (--patch-size, --ratio, --coarsest, --iterations,
--alpha, --noise, --initial-guess, --search, ...; their defaults are :class:`~vision_kernels.patchnn.GPNNConfig`'s) and
--max-side to downscale large inputs first. ``generate`` and ``retarget`` also run in batch mode
(:mod:`vision_kernels.patchnn.batch`): many inputs into an output folder, existing outputs skipped,
the work split over torchrun ranks. Every mistake (a missing or corrupt input, an output suffix
no image format has, a folder that does not exist, a setting out of range) ends with one line
naming the argument and exit status 2 before any work; see docs/patch_runs.md.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from .._cli import (
    UsageError,
    existing_file,
    nonnegative_float,
    output_file,
    output_folder,
    positive_float,
    positive_int,
    run_handler,
)
from .batch import Job, OneLineParser, expand_inputs, plan_jobs, run_jobs
from .image_io import IMAGE_SUFFIXES, IMAGE_WRITE_SUFFIXES

__all__ = ["add_parser", "main"]

PROG = "vision-kernels gpnn"
# apps.inpaint's default setting (GPNN's inpainting: little pressure to use every source patch).
INPAINT_CHANGES: dict[str, object] = {"alpha": 1.0}
# The command-line names of the GPNNConfig fields they set (VGPNN's commands add the temporal ones).
SETTINGS = {
    "patch_size": "patch_size",
    "ratio": "pyramid_ratio",
    "coarsest": "coarsest",
    "iterations": "iterations",
    "alpha": "alpha",
    "noise": "noise_std",
    "initial_guess": "initial_guess",
    "search": "search",
    "pm_iterations": "patchmatch_iterations",
    "reduction": "reduction",
}


# ------------------------------------------------------------------ argument types (argparse type=)


def _bounded_float(text: str, low: float, inclusive: bool) -> float:
    what = f"a finite number {'>=' if inclusive else '>'} {low:g}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def above_one(text: str) -> float:
    """argparse type: a finite number > 1 (a pyramid ratio)."""
    return _bounded_float(text, 1.0, inclusive=False)


def at_least_one(text: str) -> float:
    """argparse type: a finite number >= 1 (a temporal pyramid ratio; 1 = no temporal downscaling)."""
    return _bounded_float(text, 1.0, inclusive=True)


def seed_value(text: str) -> int:
    """argparse type: a seed in [0, 2**63)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**63), got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, 2**63), got {text!r}")
    return value


def _folder_like(text: str) -> bool:
    path = Path(text)
    return path.is_dir() or text.endswith(("/", "\\")) or not path.suffix


def image_output(text: str) -> Path:
    """argparse type: an image file (suffix of a format write_image knows, in an existing writable
    folder) or an output folder (no suffix; created if its parent exists)."""
    if _folder_like(text):
        return output_folder(text)
    return output_file(IMAGE_WRITE_SUFFIXES)(text)


def image_file_output(text: str) -> Path:
    """argparse type: an image file to write (not a folder)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"expected an image file name, got the folder {text!r}")
    return output_file(IMAGE_WRITE_SUFFIXES)(text)


# ------------------------------------------------------------------ settings


def _default_config() -> Any:
    from .gpnn import GPNNConfig

    return GPNNConfig()


def add_method_settings(group: argparse._ArgumentGroup, base: Any, *, noise: str, reductions: Sequence[str]) -> None:
    """The settings the GPNN and VGPNN commands share: pyramid, steps, completeness, start of
    generation, search and voting. Every default is None = ``base``'s value (a :class:`GPNNConfig`, shown in the help);
    ``noise`` describes the noise of the start (per pixel or per channel)."""
    from .gpnn import INITIAL_GUESSES
    from .search import SEARCH_METHODS

    alpha = "none (plain nearest neighbours)" if base.alpha is None else f"{base.alpha:g}"
    group.add_argument(
        "--ratio", type=above_one, help=f"spatial downscale per pyramid level, > 1 (default {base.pyramid_ratio:.4g})"
    )
    group.add_argument(
        "--coarsest", type=positive_int, help=f"shorter side of the coarsest level (default {base.coarsest})"
    )
    group.add_argument("--iterations", type=positive_int, help=f"PNN steps per level (default {base.iterations})")
    group.add_argument(
        "--alpha",
        type=positive_float,
        help=f"completeness weight on the mean-squared-difference scale, > 0 (default {alpha}); see --no-alpha",
    )
    group.add_argument("--no-alpha", action="store_true", help="plain nearest neighbours (no normalized score)")
    group.add_argument(
        "--noise",
        type=nonnegative_float,
        help=f"{noise} at the coarsest level, >= 0 (generate; default {base.noise_std:g})",
    )
    group.add_argument(
        "--initial-guess",
        choices=INITIAL_GUESSES,
        help=f"coarsest start of generate: the source's mean colour + noise (noise) or its coarsest level + noise "
        f"(source, which often returns the input) (default {base.initial_guess})",
    )
    group.add_argument(
        "--search",
        choices=SEARCH_METHODS,
        help=f"patch search (default {base.search}; auto: exact on small levels, PatchMatch on large ones)",
    )
    group.add_argument(
        "--pm-iterations", type=positive_int, help=f"PatchMatch steps per search (default {base.patchmatch_iterations})"
    )
    group.add_argument("--reduction", choices=reductions, help=f"voting (default {base.reduction})")


def _add_settings(parser: argparse.ArgumentParser, base: Any) -> None:
    """The GPNN settings; every default is None = ``base``'s value (shown in the help)."""
    group = parser.add_argument_group("GPNN settings (defaults: GPNNConfig's)")
    group.add_argument("--patch-size", type=positive_int, help=f"patch side in pixels (default {base.patch[1]})")
    add_method_settings(group, base, noise="noise std per pixel", reductions=("mean", "gaussian", "median"))
    group.add_argument(
        "--max-side", type=positive_int, default=None, help="downscale inputs whose longer side exceeds this"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_changes(args: argparse.Namespace, names: dict[str, str]) -> dict[str, object]:
    """The config fields set on the command line (``names``: argument dest -> field)."""
    changes: dict[str, object] = {
        field: getattr(args, dest) for dest, field in names.items() if getattr(args, dest, None) is not None
    }
    if getattr(args, "no_alpha", False):
        if args.alpha is not None:
            raise UsageError("--no-alpha: give either --alpha or --no-alpha, not both")
        changes["alpha"] = None
    if args.quiet:
        changes["progress"] = False
    return changes


def _config(args: argparse.Namespace, **app_changes: object) -> Any:
    """GPNNConfig with the application's and then the command line's changes; a bad combination
    (e.g. --search faiss with alpha) is a usage error raised before any input is read."""
    changes = {**app_changes, **settings_changes(args, SETTINGS)}
    if "patch_size" in changes:
        changes["patch_size"] = int(changes["patch_size"])  # type: ignore[call-overload]
    return _default_config().with_(**changes)


# ------------------------------------------------------------------ inputs and outputs


def _load(path: Path | str, max_side: int | None) -> Tensor:
    from .image_io import read_image

    return _downscale(read_image(path, channels=3), max_side)


def _downscale(image: Tensor, max_side: int | None) -> Tensor:
    from .pyramid import resize

    if max_side is not None and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        size = (1, max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        image = resize(image[None], size)[0]
    return image


class _Cached:
    """The last image loaded (the samples of one input reuse it)."""

    def __init__(self, max_side: int | None) -> None:
        self.max_side = max_side
        self.path: Path | None = None
        self.image: Tensor | None = None

    def __call__(self, path: Path) -> Tensor:
        if self.path != path or self.image is None:
            self.path, self.image = path, _load(path, self.max_side)
        return self.image


def _write(path: Path, image: Tensor) -> str:
    from .image_io import write_image

    write_image(path, image)
    return f"{image.shape[1]}x{image.shape[0]}"


def _batch_jobs(args: argparse.Namespace, count: int) -> tuple[list[Job], bool]:
    """Inputs -> jobs; batch mode when the inputs are several / a folder / a pattern, or -o is a folder."""
    sources, batch = expand_inputs(args.input, IMAGE_SUFFIXES, argument="INPUT")
    output: Path = args.output
    to_folder = _folder_like(str(output))
    if batch and not to_folder:
        raise UsageError(
            f"-o/--output: {len(sources)} inputs need an output folder (a path without suffix), got {str(output)!r}"
        )
    if args.format is not None and not to_folder:
        raise UsageError(f"--format: applies to an output folder; {str(output)!r} names its own format")
    suffix = "." + (args.format or "png")
    jobs = plan_jobs(sources, batch=batch or to_folder, output=output, count=count, seed=args.seed, suffix=suffix)
    return jobs, batch or to_folder


def run_batch(args: argparse.Namespace, jobs: list[Job], batch: bool, work: Callable[[Job], str], command: str) -> int:
    """Run ``work`` on ``jobs`` (creating the output folder in batch mode) with the command's
    ``--overwrite`` and ``--quiet``; ``command`` names the command in messages."""
    if batch:
        args.output.mkdir(exist_ok=True)
    return run_jobs(jobs, work, batch=batch, overwrite=args.overwrite, command=command, quiet=args.quiet)


# ------------------------------------------------------------------ subcommands


def _generate(args: argparse.Namespace) -> int:
    from .apps import generate

    config = _config(args)
    jobs, batch = _batch_jobs(args, args.count)
    load = _Cached(args.max_side)

    def work(job: Job) -> str:
        return _write(job.output, generate(load(job.source), seed=job.seed, config=config, size=args.size))

    return run_batch(args, jobs, batch, work, f"{PROG} {args.gpnn_command}")


def _retarget(args: argparse.Namespace) -> int:
    from .apps import retarget

    config = _config(args)
    jobs, batch = _batch_jobs(args, 1)
    load = _Cached(args.max_side)

    def work(job: Job) -> str:
        return _write(job.output, retarget(load(job.source), args.size, config=config, seed=job.seed))

    return run_batch(args, jobs, batch, work, f"{PROG} {args.gpnn_command}")


def _single(args: argparse.Namespace, compute: Callable[[], Tensor]) -> int:
    job = Job(Path("-"), 0, args.seed, args.output)
    return run_jobs([job], lambda j: _write(j.output, compute()), batch=False, overwrite=True, command=PROG)


def _analogy(args: argparse.Namespace) -> int:
    from .apps import analogy

    config = _config(args)
    content, structure = _load(args.content, args.max_side), _load(args.structure, args.max_side)
    return _single(args, lambda: analogy(content, structure, config=config, seed=args.seed))


def _inpaint(args: argparse.Namespace) -> int:
    from .apps import inpaint
    from .image_io import read_mask
    from .pyramid import resize

    config = _config(args, **INPAINT_CHANGES)
    image = _load(args.input, args.max_side)
    hole = read_mask(args.mask)
    if not bool(hole.any()):
        raise UsageError(f"MASK: {str(args.mask)!r} marks no pixel to fill in (white, > 0.5, = fill in)")
    if bool(hole.all()):
        raise UsageError(f"MASK: {str(args.mask)!r} marks every pixel; nothing is left to copy patches from")
    if tuple(hole.shape) != tuple(image.shape[:2]):
        hole = resize(hole.float()[None, ..., None], (1, *image.shape[:2]))[0, ..., 0] > 0.5
    return _single(
        args, lambda: inpaint(image, hole, config=config, seed=args.seed, fit_coarsest=not args.fixed_coarsest)
    )


def _collage(args: argparse.Namespace) -> int:
    from .apps import collage

    config = _config(args)
    images = [_load(p, args.max_side) for p in args.inputs]
    return _single(args, lambda: collage(images, size=args.size, config=config, seed=args.seed))


def _edit(args: argparse.Namespace) -> int:
    from .apps import edit

    config = _config(args)
    source, edited = _load(args.source, None), _load(args.edited, None)
    if source.shape[:2] != edited.shape[:2]:
        raise UsageError(
            f"EDITED: {str(args.edited)!r} is {edited.shape[1]}x{edited.shape[0]} px, the source "
            f"{str(args.source)!r} {source.shape[1]}x{source.shape[0]}; the edited image must keep the source's size"
        )
    source, edited = _downscale(source, args.max_side), _downscale(edited, args.max_side)
    return _single(args, lambda: edit(source, edited, config=config, seed=args.seed))


# ------------------------------------------------------------------ parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``gpnn`` and its subcommands to the ``vision-kernels`` parser."""
    base = _default_config()
    gpnn = subparsers.add_parser("gpnn", help="GPNN single-image generation and editing on image files")
    commands = gpnn.add_subparsers(dest="gpnn_command", required=True, parser_class=OneLineParser)
    suffixes = ", ".join(IMAGE_WRITE_SUFFIXES)

    def command(name: str, help_text: str, handler: Callable[[argparse.Namespace], int], *, batch: bool = False):  # type: ignore[no-untyped-def]
        p = commands.add_parser(name, help=help_text, description=help_text)
        if batch:
            p.add_argument(
                "-o",
                "--output",
                required=True,
                type=image_output,
                help=f"output image ({suffixes}), or a folder (no suffix) for batch mode",
            )
            p.add_argument(
                "--format",
                choices=[s[1:] for s in IMAGE_WRITE_SUFFIXES],
                help="image format of the files written into an output folder (default png)",
            )
            p.add_argument("--overwrite", action="store_true", help="batch mode: redo outputs that exist")
        else:
            p.add_argument("-o", "--output", required=True, type=image_file_output, help=f"output image ({suffixes})")
        p.add_argument("--seed", type=seed_value, default=0, help="random seed, >= 0 (default 0)")
        p.set_defaults(handler=handler)
        return p

    inputs_help = "source image(s): files, folders of images, or quoted glob patterns ('photos/*.jpg')"
    p = command("generate", "random samples from one image (or each of many)", _generate, batch=True)
    p.add_argument("input", nargs="+", help=inputs_help)
    p.add_argument("--count", type=positive_int, default=1, help="samples per input (seeds seed, seed+1, ...)")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="output size (default: the source's)")
    _add_settings(p, base)

    p = command("retarget", "resize to any shape keeping the image's patches", _retarget, batch=True)
    p.add_argument("input", nargs="+", help=inputs_help)
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), required=True, help="output size")
    _add_settings(p, base)

    p = command("analogy", "the structure of one image drawn with the patches of another", _analogy)
    p.add_argument("content", type=existing_file, help="image giving the patches (A)")
    p.add_argument("structure", type=existing_file, help="image giving the layout (B)")
    _add_settings(p, base)

    p = command("inpaint", "fill a masked region from the rest of the image", _inpaint)
    p.add_argument("input", type=existing_file, help="image")
    p.add_argument("mask", type=existing_file, help="mask image, white (> 0.5) where pixels are to be filled in")
    p.add_argument(
        "--fixed-coarsest", action="store_true", help="keep --coarsest (default: fit it so the hole spans ~1 patch)"
    )
    _add_settings(p, base.with_(**INPAINT_CHANGES))

    p = command("collage", "a seamless collage of several images", _collage)
    p.add_argument("inputs", nargs="+", type=existing_file, help="source images, placed left to right")
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), help="output size (default: side by side)")
    _add_settings(p, base)

    p = command("edit", "make a roughly edited image coherent with the original's patches", _edit)
    p.add_argument("source", type=existing_file, help="original image")
    p.add_argument("edited", type=existing_file, help="edited version (same size; objects moved, copied or removed)")
    _add_settings(p, base)
    return gpnn


def run_group(add: Callable[[argparse._SubParsersAction], Any], group: str, argv: list[str] | None) -> int:
    """Parse ``vision-kernels GROUP *argv`` with the parser ``add`` builds (``add_parser`` of a command
    module) and run the chosen handler as the top-level command does (one-line errors, exit codes)."""
    parser = argparse.ArgumentParser(prog="vision-kernels")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    add(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([group, *(argv or [])])
    return run_handler(args.handler, args, f"vision-kernels {group} {getattr(args, f'{group}_command')}")


def main(argv: list[str] | None = None) -> int:
    """Run ``vision-kernels gpnn ...`` with ``argv`` (for tests and ``python -m``)."""
    return run_group(add_parser, "gpnn", argv)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
