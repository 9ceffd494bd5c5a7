"""``vision-kernels demo``: each family's showcase on embedded default data, plus the benchmark table.

Sections are discovered: every module ``vision_kernels/demo/<family>[_<suffix>].py`` (not starting
with ``_``) is one, named after the module, with ``run(out_dir: Path, quick: bool) -> list[Path]``
returning the files it wrote and an integer ``ORDER`` placing it in the run (lowest first; ties by
name). A new family adds its module and edits no shared list. :data:`SECTIONS` (name -> module) is
built on first use. Inputs come with the installed packages (skimage sample images, synthesized
data, random-weight models), so the demo runs offline on a fresh machine.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .._files import write_text_atomic


@functools.cache
def discover_sections() -> dict[str, str]:
    """Section name -> module, in run order (each module's ``ORDER``, then its name)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if not callable(getattr(module, "run", None)):
            raise TypeError(f"vision_kernels.demo: section module {module.__name__} defines no run(out_dir, quick)")
        found.append((int(getattr(module, "ORDER", 1000)), info.name, module.__name__))
    return {name: module for _, name, module in sorted(found)}


def __getattr__(name: str) -> Any:
    if name == "SECTIONS":  # computed on first use: importing vision_kernels.demo stays cheap
        return discover_sections()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_demo(
    out_dir: Path,
    *,
    sections: Sequence[str] | None = None,
    quick: bool = False,
    benchmarks: bool = True,
    full_benchmarks: bool = False,
    log: TextIO | None = None,
) -> list[Path]:
    """Run the selected sections (all by default) and the benchmarks; return the files written.

    ``log`` defaults to ``sys.stdout`` at call time (not at import: a replaced stdout may be closed by then)."""
    log = sys.stdout if log is None else log
    known = discover_sections()
    chosen = list(sections) if sections else list(known)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"vision_kernels.demo: unknown section(s) {unknown}; choose from {list(known)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in chosen:
        start = time.perf_counter()
        print(f"== {name}", file=log, flush=True)
        module = importlib.import_module(known[name])
        section_dir = out_dir / name
        section_dir.mkdir(parents=True, exist_ok=True)
        files = module.run(section_dir, quick)
        written.extend(files)
        for path in files:
            print(f"   wrote {path}", file=log)
        print(f"   ({time.perf_counter() - start:.1f} s)", file=log, flush=True)
    if benchmarks:
        from ..bench.cli import format_table, report, run

        print("== benchmarks" + ("" if full_benchmarks else " (quick sizes)"), file=log, flush=True)
        families = None if sections is None else set(chosen)
        measurements, limits = run(quick=not full_benchmarks, log=log)
        measurements = [m for m in measurements if families is None or m.module in families]
        table = format_table(measurements, limits)
        import json

        write_text_atomic((out_dir / "benchmarks.md"), table + "\n")
        write_text_atomic(
            (out_dir / "benchmarks.json"), json.dumps(report(measurements, limits), indent=2, default=str) + "\n"
        )
        written += [out_dir / "benchmarks.md", out_dir / "benchmarks.json"]
        print(table, file=log)
    return written
