"""``python -m vision_kernels.gpucheck [options]``: what ``make gpu-check`` runs from a checkout, before the package
is built (only this command's parser is built here: the other commands' modules may need the compiled core)."""

from __future__ import annotations

import argparse
import sys

from .._cli import run_handler
from .cli import add_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vision_kernels.gpucheck")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gpu-check", *(sys.argv[1:] if argv is None else argv)])
    return run_handler(args.handler, args, "vision-kernels gpu-check")


if __name__ == "__main__":
    sys.exit(main())
