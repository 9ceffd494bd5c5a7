"""The ``vision-kernels`` command line.

    vision-kernels demo [--out DIR] [--quick] [--section NAME ...] [--no-bench] [--full-bench]
    vision-kernels bench [--quick] [--json PATH] [--markdown PATH] [--family NAME]
    vision-kernels info

Method families add their own subcommands (e.g. ``vision-kernels gpnn generate ...``) by
listing a module in :data:`COMMAND_MODULES` that defines ``add_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

COMMAND_MODULES: list[str] = ["vision_kernels.patchnn.cli", "vision_kernels.patchnn.video_cli"]


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    out = Path(args.out)
    print(f"vision-kernels demo: writing into {out.resolve()}")
    files = run_demo(
        out,
        sections=args.section,
        quick=args.quick,
        benchmarks=not args.no_bench,
        full_benchmarks=args.full_bench,
    )
    print(f"vision-kernels demo: {len(files)} files in {out.resolve()}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench.cli import main as bench_main

    return bench_main(args.bench_args)


def _info(args: argparse.Namespace) -> int:
    from . import build_info

    print(json.dumps(build_info(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vision-kernels", description="vision_kernels command line")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run every family's showcase and the benchmarks")
    demo.add_argument("--out", default="demo_output", help="output folder (default: ./demo_output)")
    demo.add_argument("--quick", action="store_true", help="smaller inputs (seconds instead of minutes)")
    demo.add_argument("--section", action="append", help="run only this section (repeatable)")
    demo.add_argument("--no-bench", action="store_true", help="skip the benchmark table")
    demo.add_argument("--full-bench", action="store_true", help="full benchmark sizes instead of quick ones")
    demo.set_defaults(handler=_demo)

    bench = commands.add_parser("bench", help="run the benchmarks (same as python benchmarks/run.py)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=_bench)

    info = commands.add_parser("info", help="print vision_kernels.build_info() as JSON")
    info.set_defaults(handler=_info)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("vision-kernels: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
