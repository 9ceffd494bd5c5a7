"""``vision-kernels gpu-check``: build for this machine's CUDA device, parity tests and benchmarks on it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .._cli import output_file, positive_float


def _handler(args: argparse.Namespace) -> int:
    from .run import check, find_source

    source = args.source.resolve() if args.source is not None else find_source(Path.cwd())
    return check(source=source, out=args.json, build=not args.no_build, tests=not args.no_tests,
                 bench=not args.no_bench, budget=args.budget)  # fmt: skip


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "gpu-check",
        help="on a machine with a CUDA device: build for it, run every CUDA kernel's parity tests and benchmarks "
        "on it (exit 77 without a device)",
        description=__doc__ + " Exit codes: 0 pass, 1 failure, 2 usage, 77 no usable CUDA device.",
    )
    parser.add_argument("--json", type=output_file([".json"]), default=Path("gpu_check_output/gpu_check.json"),
                        help="JSON report (default: gpu_check_output/gpu_check.json)")  # fmt: skip
    parser.add_argument("--source", type=Path, help="the vision-kernels checkout (default: the one around here)")
    parser.add_argument("--budget", type=positive_float, default=600.0, help="seconds for everything (default 600)")
    parser.add_argument("--no-build", action="store_true", help="use the installed build as it is")
    parser.add_argument("--no-tests", action="store_true", help="skip the parity tests")
    parser.add_argument("--no-bench", action="store_true", help="skip the benchmarks")
    parser.set_defaults(handler=_handler)
