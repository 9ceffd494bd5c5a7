"""``vision-kernels w2w ...``: weights2weights at dataset scale from the shell (docs/w2w_runs.md).

    vision-kernels w2w collect ADAPTERS/ --out weights/ [--attributes CSV] [--dtype float16]
    vision-kernels w2w fit     weights/ --components K --out space.safetensors [--seed 0]
    vision-kernels w2w sample  --space S --count N --out DIR/ [--seed 0] [--scale 1]
    vision-kernels w2w edit    --space S --adapter A --attribute NAME --strength X --out DIR/
    vision-kernels w2w invert  --space S --image F --base-model ID_OR_FOLDER --steps N --out DIR/
    vision-kernels w2w project --space S --adapter A [--out FILE.json]

``collect`` and ``fit`` also run under ``torchrun --nproc-per-node N`` (each rank takes its own
shards / row blocks; sums are all_reduced). The functions live in :mod:`.collect` and
:mod:`.workflows`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._cli import (
    existing_file,
    finite_float,
    forwarded,
    nonnegative_int,
    output_file,
    output_folder,
    positive_float,
    positive_int,
)

__all__ = ["add_parser"]


def _existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return path


def _collect(args: argparse.Namespace) -> int:
    from ..runs import distributed
    from .collect import collect_adapters

    ranks = distributed.init_from_env()
    options = forwarded(args, "attributes", "dtype", "shard_size", "reference", "overwrite")
    result = collect_adapters(args.adapters, args.out, **options)
    if ranks.main:
        for item in result.skipped:
            print(f"skipped {item['name']}: {item['reason']}", file=sys.stderr)
        print(f"w2w collect: {result.models} models ({result.layout.describe()}), {len(result.skipped)} skipped, "
              f"in {result.folder}")  # fmt: skip
    return 0


def _fit(args: argparse.Namespace) -> int:
    from ..runs import distributed
    from .workflows import fit_space

    ranks = distributed.init_from_env()
    budget = int(args.memory_gb * 2**30)
    options = forwarded(args, "seed", "oversample", "verify", n_iter="power_iterations")
    space = fit_space(args.weights, args.out, args.components, memory=budget,
                      gram_memory=0 if args.no_gram else budget, **options)  # fmt: skip
    if ranks.main:
        explained = float(space.explained_variance_ratio.sum())
        print(f"w2w fit: {space.n_components} components of {space.n_models} models x {space.dim} dimensions, "
              f"{100 * explained:.2f}% of the variance, {ranks.world} rank(s); wrote {args.out}")  # fmt: skip
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .workflows import sample_adapters

    options = forwarded(args, "seed", "scale", "format", n_components="components")
    written = sample_adapters(args.space, args.count, args.out, **options)
    print(f"w2w sample: {len(written)} adapters in {args.out}")
    return 0


def _edit(args: argparse.Namespace) -> int:
    from .workflows import edit_adapter

    options = forwarded(args, "format", attributes_csv="attributes")
    out = edit_adapter(args.space, args.adapter, args.attribute, args.strength, args.out, **options)
    print(f"w2w edit: {args.attribute} {args.strength:+g} -> {out}")
    return 0


def _invert(args: argparse.Namespace) -> int:
    from .workflows import invert_image

    options = forwarded(args, "steps", "lr", "prompt", "seed", "format", n_components="components")
    out = invert_image(args.space, args.image, args.base_model, args.out, **options)
    print(f"w2w invert: {args.image} -> {out}")
    return 0


def _project(args: argparse.Namespace) -> int:
    from .._files import atomic_open
    from .workflows import project_adapter

    result = project_adapter(args.space, args.adapter, n_components=args.components)
    text = json.dumps(result)
    if args.out is None:
        print(text)
    else:
        with atomic_open(args.out, "w", encoding="utf-8", function="vision-kernels w2w project") as handle:
            handle.write(text + "\n")
        print(f"w2w project: {result['n_components']} coefficients -> {args.out}", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``w2w`` command group to the ``vision-kernels`` parser."""
    w2w = subparsers.add_parser("w2w", help="weights2weights: collect LoRA adapters, fit, sample, edit, invert")
    commands = w2w.add_subparsers(dest="w2w_command", required=True)

    def command(name: str, help_text: str, handler) -> argparse.ArgumentParser:  # noqa: ANN001
        parser = commands.add_parser(name, help=help_text, description=help_text)
        parser.set_defaults(handler=handler)
        return parser

    def space_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--space", type=existing_file, required=True, help="weight space file (from w2w fit)")

    def format_argument(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--format",
            choices=("peft", "diffusers"),
            default="peft",
            help="adapter format: peft (PeftModel.from_pretrained) or diffusers (pipe.load_lora_weights)",
        )

    collect = command("collect", "flatten a folder of LoRA adapters into resumable row-block shards", _collect)
    collect.add_argument("adapters", type=_existing_path, help="folder with one adapter folder (or file) per model")
    collect.add_argument("--out", type=output_folder, required=True, help="run folder for the shards")
    collect.add_argument("--attributes", type=existing_file, help="CSV: name column + one numeric column per attribute")
    collect.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="row storage")
    collect.add_argument("--shard-size", type=positive_int, default=256, help="adapters per shard (default 256)")
    collect.add_argument("--reference", type=_existing_path, help="adapter whose layout the others must match")
    collect.add_argument("--overwrite", action="store_true", help="replace a run with other settings in --out")
    collect.add_argument("--quiet", action="store_true", help="no progress bar")

    fit = command("fit", "streaming randomized PCA of collected weights (torchrun: one row slice per rank)", _fit)
    fit.add_argument("weights", type=_existing_path, help="run folder from w2w collect, or a .safetensors/.npy matrix")
    fit.add_argument("--components", type=positive_int, required=True, help="number of principal components K")
    fit.add_argument("--out", type=output_file([".safetensors"]), required=True, help="space file to write")
    fit.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random sketch (default 0)")
    fit.add_argument("--oversample", type=nonnegative_int, default=10, help="extra sketch columns (default 10)")
    fit.add_argument("--power-iterations", type=nonnegative_int, default=4, help="power iterations (default 4)")
    fit.add_argument("--memory-gb", type=positive_float, default=2.0, help="row blocks + Gram cache budget (GiB)")
    fit.add_argument("--no-gram", action="store_true", help="never cache the N x N Gram matrix (two-pass operator)")
    fit.add_argument("--verify", action="store_true", help="check every shard's sha256 before fitting")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")

    sample = command("sample", "draw new models from the space and write them as adapters", _sample)
    space_argument(sample)
    sample.add_argument("--count", type=positive_int, required=True, help="number of models")
    sample.add_argument("--out", type=output_folder, required=True, help="folder for sample-000000/ ...")
    sample.add_argument("--seed", type=nonnegative_int, default=0, help="seed (default 0)")
    sample.add_argument("--scale", type=positive_float, default=1.0, help="std multiplier of the coefficients")
    sample.add_argument("--components", type=positive_int, help="use only the first K components")
    format_argument(sample)
    sample.add_argument("--quiet", action="store_true", help="no progress bar")

    edit = command("edit", "move an adapter along an attribute direction", _edit)
    space_argument(edit)
    edit.add_argument("--adapter", type=_existing_path, required=True, help="adapter folder or file to edit")
    edit.add_argument("--attribute", required=True, help="attribute name (a column of the collect CSV)")
    edit.add_argument("--strength", type=finite_float, required=True, help="step along the direction (coefficients)")
    edit.add_argument("--out", type=output_folder, required=True, help="folder for the edited adapter")
    edit.add_argument("--attributes", type=existing_file, help="attribute CSV (default: the one stored in the space)")
    format_argument(edit)

    invert = command("invert", "invert one image into the space through a diffusers base model", _invert)
    space_argument(invert)
    invert.add_argument("--image", type=existing_file, required=True, help="image file")
    invert.add_argument("--base-model", required=True, help="diffusers pipeline id or folder, or a UNet folder")
    invert.add_argument("--steps", type=positive_int, default=400, help="optimization steps (default 400)")
    invert.add_argument("--lr", type=positive_float, default=0.1, help="Adam learning rate (default 0.1)")
    invert.add_argument("--components", type=positive_int, help="optimize the first K coefficients (default all)")
    invert.add_argument("--prompt", default="sks person", help="conditioning prompt (default 'sks person')")
    invert.add_argument("--seed", type=nonnegative_int, default=0, help="seed of noise and timesteps")
    invert.add_argument("--out", type=output_folder, required=True, help="folder for the inverted adapter")
    format_argument(invert)
    invert.add_argument("--quiet", action="store_true", help="no progress bar")

    project = command("project", "coordinates of an adapter in the space, as JSON", _project)
    space_argument(project)
    project.add_argument("--adapter", type=_existing_path, required=True, help="adapter folder or file")
    project.add_argument("--components", type=positive_int, help="only the first K coefficients")
    project.add_argument("--out", type=output_file([".json"]), help="write the JSON here instead of stdout")
    return w2w


def main(argv: list[str] | None = None) -> int:
    """``python -m vision_kernels.weightspace.cli w2w ...`` (same as ``vision-kernels w2w ...``)."""
    from .. import cli

    return cli.main(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
