"""``python benchmarks/run.py`` / ``vision-kernels bench``: run the registered cases, print the table."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from .._files import write_text_atomic
from .harness import CASES, Measurement, ceilings, run_case


def load_cases() -> None:
    """Import every module of vision_kernels.bench.cases (each registers its family's cases)."""
    import importlib
    import pkgutil

    from . import cases

    for module in pkgutil.iter_modules(cases.__path__):
        importlib.import_module(f"{cases.__name__}.{module.name}")


def family_ids() -> list[str]:
    """What ``--family`` accepts: every family id, then every cases module that is not itself a family id."""
    families = sorted({c.family for c in CASES})
    modules = sorted({c.module for c in CASES} - set(families))
    return families + modules


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.3g}" if value < 100 else f"{value:.0f}")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1f}"


def format_table(measurements: Sequence[Measurement], limits: dict[str, float]) -> str:
    """Markdown table of the measurements, ratios measured in this run."""
    lines = [
        f"Ceilings on this machine: fp32 matmul {limits['matmul_gflops']:.0f} GFLOP/s, "
        f"copy {limits['copy_gbs']:.1f} GB/s; {torch.get_num_threads()} threads; "
        f"{platform.processor() or platform.machine()}.",
        "Times are medians (ms); speedup = other / ours; memory = peak extra MiB during a call.",
        "",
        "| case | ours ms | ref ms | speedup vs ref | anchor | anchor ms | speedup vs anchor "
        "| ours MiB | ref MiB | ref/ours mem | % ceiling | metrics |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        anchors: list[str | None] = [*m.anchors_ms] or [None]
        for index, anchor in enumerate(anchors):
            first = index == 0
            ceiling = "-"
            if first and m.fraction_of_ceiling is not None:
                ceiling = f"{100 * m.fraction_of_ceiling:.0f}% {m.ceiling}"
            metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.metrics.items())
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"{m.family}: {m.name}" if first else "",
                        _ms(m.ours_ms) if first else "",
                        _ms(m.reference_ms) if first else "",
                        _ratio(m.speedup_vs_reference) if first else "",
                        anchor or "-",
                        _ms(m.anchors_ms[anchor]) if anchor else "-",
                        _ratio(m.speedup_vs(anchor)) if anchor else "-",
                        _mib(m.ours_peak_mib) if first else "",
                        _mib(m.reference_peak_mib) if first else "",
                        _ratio(m.memory_vs_reference) if first else "",
                        ceiling,
                        metrics if first else "",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def run(
    *,
    quick: bool = False,
    family: str | None = None,
    name_filter: str | None = None,
    log: TextIO | None = None,
) -> tuple[list[Measurement], dict[str, float]]:
    """Run the selected cases in this process; returns the measurements and the ceilings (``log``:
    sys.stderr at call time by default)."""
    log = sys.stderr if log is None else log
    load_cases()
    selected = [
        c
        for c in CASES
        if (not quick or c.quick)
        and (family is None or c.selected_by(family))
        and (name_filter is None or name_filter in c.name)
    ]
    limits = ceilings()
    measurements = []
    for index, benchmark in enumerate(selected, 1):
        print(f"[{index}/{len(selected)}] {benchmark.family}: {benchmark.name}", file=log, flush=True)
        measurements.append(run_case(benchmark, quick))
    return measurements, limits


def report(measurements: Sequence[Measurement], limits: dict[str, float]) -> dict[str, Any]:
    import vision_kernels

    return {
        "build_info": vision_kernels.build_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "ceilings": limits,
        "cases": [m.as_dict() for m in measurements],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats, quick cases only")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--family", help="only this family id or cases module (the ids are listed below)")
    parser.add_argument("--case", dest="name_filter", help="only cases whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    load_cases()
    parser.epilog = "family ids: " + ", ".join(family_ids())
    args = parser.parse_args(argv)
    if args.family is not None and args.family not in family_ids():
        parser.error(f"--family: unknown id {args.family!r}; choose from {', '.join(family_ids())}")
    if args.list:
        for c in CASES:
            if args.family is not None and not c.selected_by(args.family):
                continue
            print(f"{c.family}: {c.name}{'' if c.quick else '  (full runs only)'}")
        return 0
    measurements, limits = run(quick=args.quick, family=args.family, name_filter=args.name_filter)
    table = format_table(measurements, limits)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.markdown, table + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.json, json.dumps(report(measurements, limits), indent=2, default=str) + "\n")
    return 0
