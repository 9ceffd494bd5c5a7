"""The ``vision-kernels`` command line.

    vision-kernels demo [--out DIR] [--quick] [--section NAME ...] [--no-bench] [--full-bench]
    vision-kernels bench [--quick] [--json PATH] [--markdown PATH] [--family NAME]
    vision-kernels info

Method families add their own subcommands (e.g. ``vision-kernels gpnn generate ...``): every
module named ``cli`` or ``*_cli`` in a subpackage of vision_kernels that defines
``add_parser(subparsers)`` is discovered (:func:`command_modules`), so a new family edits no
shared list.

Every command follows vision_kernels._cli: a user mistake prints one line naming the argument and
exits 2, a failed run exits 1, ``--debug`` (before or after the command) shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ._cli import UsageError, output_folder, run_handler

_SKIP = {"vision_kernels.bench.cli"}  # `vision-kernels bench` forwards to it (below)


def command_modules() -> list[str]:
    """Modules ``vision_kernels.<package>[.<sub>].cli`` / ``*_cli`` that add subcommands, sorted."""
    import vision_kernels

    found = []
    for info in pkgutil.walk_packages(vision_kernels.__path__, "vision_kernels.", onerror=lambda name: None):
        leaf = info.name.rsplit(".", 1)[-1]
        if info.name.count(".") >= 2 and (leaf == "cli" or leaf.endswith("_cli")) and info.name not in _SKIP:
            found.append(info.name)
    return sorted(found)


def _demo(args: argparse.Namespace) -> int:
    from .demo import SECTIONS, run_demo

    unknown = [s for s in args.section or [] if s not in SECTIONS]
    if unknown:
        raise UsageError(f"--section: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run every family's showcase and the benchmarks")
    demo.add_argument(
        "--out", type=output_folder, default=Path("demo_output"), help="output folder (default: ./demo_output)"
    )
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

    for module_name in command_modules():
        module = importlib.import_module(module_name)
        if hasattr(module, "add_parser"):
            module.add_parser(commands)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    words = ["vision-kernels", str(args.command)]
    words += [str(v) for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)]
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug and argv and argv[0] != "bench":  # --debug is accepted anywhere on the line
        argv = ["--debug", *[a for a in argv if a != "--debug"]]
    args = build_parser().parse_args(argv)
    return run_handler(args.handler, args, _command_name(args))


if __name__ == "__main__":
    sys.exit(main())
