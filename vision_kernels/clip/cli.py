"""``vision-kernels clip ...``: dataset-scale CLIP decomposition commands (see docs/clip_runs.md).

    vision-kernels clip decompose --model NAME [--pretrained TAG | --checkpoint FILE] --images SRC --out RUN/
                                  [--layers L ...] [--per-token] [--dtype fp16] [--batch-size 64] [--workers 2]
    vision-kernels clip textspan RUN/ --texts BANK [--heads last4|L.H,...] [--k 10]
    vision-kernels clip ablate RUN/ [--labels NAMES] [--heads L.H,...]
    vision-kernels clip segment --model NAME --images IMAGES/ --masks MASKS/ --out RESULT/

Every command also runs under ``torchrun --nproc-per-node N -m vision_kernels.cli clip ...``.
Other modules of the clip package add subcommands under ``clip`` by defining
``add_subcommands(clip_subparsers)`` in a module named ``*_cli`` (collected by :func:`add_parser`;
they must not define ``add_parser``, which would add a second top-level ``clip``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable

from .._cli import existing_file, existing_folder, forwarded, nonnegative_int, output_folder, positive_int
from ._arguments import model_arguments

_DTYPES = ("float16", "fp16", "bfloat16", "bf16", "float32", "fp32", "float64")


def _choice(args: argparse.Namespace):  # noqa: ANN202 - ModelChoice, imported lazily
    from .runs import ModelChoice

    pretrained = None if args.pretrained in (None, "none") else args.pretrained
    checkpoint = str(args.checkpoint) if args.checkpoint is not None else None
    return ModelChoice(args.model, pretrained, checkpoint, args.seed)


def _leaves_process_group(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``handler`` and then leave torch.distributed's process group (if torchrun made one) cleanly."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        finally:
            import torch.distributed

            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    return run


def _decompose(args: argparse.Namespace) -> int:
    from .runs import decompose_run

    options = forwarded(args, "layers", "per_token", "dtype", "convention", "normalize", "batch_size", "workers",
                        "shard_size", "overwrite", "device")  # fmt: skip
    decompose_run(args.out, args.images, model=_choice(args), **options)
    return 0


def _textspan(args: argparse.Namespace) -> int:
    from .runs import textspan_run

    paths = textspan_run(args.run, args.texts, heads=args.heads, k=args.k, rank=args.rank, out=args.out)
    print(f"vision-kernels clip textspan: wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from .runs import ablate_run

    paths = ablate_run(args.run, labels=args.labels, templates=args.templates, heads=args.heads, out=args.out)
    print(f"vision-kernels clip ablate: wrote {', '.join(str(p) for p in paths.values())}")
    print(paths["md"].read_text(encoding="utf-8"), end="")
    return 0


def _segment(args: argparse.Namespace) -> int:
    from .segment_run import segment_run

    options = forwarded(args, "layers", "text", "batch_size", "workers", "device")
    paths = segment_run(args.out, args.images, args.masks, model=_choice(args), **options)
    print(f"vision-kernels clip segment: wrote {', '.join(str(p) for p in paths.values())}")
    print(paths["md"].read_text(encoding="utf-8"), end="")
    return 0


def _extra_command_modules() -> list[str]:
    import vision_kernels.clip as package

    return sorted(
        f"{package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.endswith("_cli")
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    clip = subparsers.add_parser("clip", help="dataset-scale CLIP decomposition runs (docs/clip_runs.md)")
    commands = clip.add_subparsers(dest="clip_command", required=True)

    decompose = commands.add_parser("decompose", help="decompose every image of a source into a sharded run folder")
    model_arguments(decompose, seed=True)
    decompose.add_argument("--images", required=True, help="class-folder tree, list file of paths, or .tar shards")
    decompose.add_argument("--out", required=True, type=output_folder, help="run folder (resumed if it exists)")
    decompose.add_argument(
        "--layers", type=int, nargs="+", help="layers whose heads are kept (default all; negative from the end)"
    )
    decompose.add_argument("--per-token", action="store_true", help="keep the source-token axis (large)")
    decompose.add_argument("--dtype", default="float16", choices=_DTYPES, help="storage dtype (default float16)")
    decompose.add_argument("--convention", default="per_term", choices=("per_term", "even_split"))
    decompose.add_argument("--normalize", action="store_true", help="terms sum to the normalized embedding")
    decompose.add_argument("--batch-size", type=positive_int, default=64)
    decompose.add_argument("--workers", type=nonnegative_int, default=2, help="DataLoader worker processes")
    decompose.add_argument("--shard-size", type=positive_int, default=1024, help="images per shard (default 1024)")
    decompose.add_argument("--overwrite", action="store_true", help="replace a run of other settings in --out")
    decompose.set_defaults(handler=_leaves_process_group(_decompose))

    textspan = commands.add_parser("textspan", help="TextSpan text descriptions of heads from a decompose run")
    textspan.add_argument("run", type=existing_folder, help="folder of a finished clip decompose run")
    textspan.add_argument("--texts", required=True, help="text bank: a file of one text per line, or a shipped name")
    textspan.add_argument("--heads", default="last4", help="last<k> (default last4), all, or L.H,L.H,...")
    textspan.add_argument("--k", type=positive_int, default=10, help="texts per head (default 10)")
    textspan.add_argument("--rank", type=positive_int, default=80, help="span rank (default 80, as the paper)")
    textspan.add_argument("--out", type=existing_folder, help="report folder (default: the run folder)")
    textspan.set_defaults(handler=_leaves_process_group(_textspan))

    ablate = commands.add_parser("ablate", help="zero-shot accuracy after mean-ablating MLPs, layers or heads")
    ablate.add_argument("run", type=existing_folder, help="folder of a finished clip decompose run (class folders)")
    ablate.add_argument("--labels", type=existing_file, help="class names, one per line in class order")
    ablate.add_argument("--templates", type=existing_file, help="prompt templates with {} (default: 8 CLIP prompts)")
    ablate.add_argument("--heads", help="also ablate these heads together: L.H,L.H,... or last<k>")
    ablate.add_argument("--out", type=existing_folder, help="report folder (default: the run folder)")
    ablate.set_defaults(handler=_leaves_process_group(_ablate))

    segment = commands.add_parser("segment", help="zero-shot segmentation scores over an image/mask folder pair")
    model_arguments(segment, seed=True)
    segment.add_argument("--images", required=True, type=existing_folder, help="images (class sub-folders or flat)")
    segment.add_argument("--masks", required=True, type=existing_folder, help="masks at the same relative paths")
    segment.add_argument("--out", required=True, type=output_folder, help="folder for segmentation.json/.md")
    segment.add_argument("--layers", type=int, nargs="+", help="layers whose heads make the heatmap (default all)")
    segment.add_argument("--text", help="one prompt for every image (default: 'a photo of a {class}' per image)")
    segment.add_argument("--batch-size", type=positive_int, default=32)
    segment.add_argument("--workers", type=nonnegative_int, default=2)
    segment.set_defaults(handler=_leaves_process_group(_segment))

    for name in _extra_command_modules():
        module = importlib.import_module(name)
        if hasattr(module, "add_subcommands"):
            module.add_subcommands(commands)


__all__ = ["add_parser"]
