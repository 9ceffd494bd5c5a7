"""``vision-kernels demo``: each family's showcase on embedded default data, plus the benchmark table.

Sections are listed in :data:`SECTIONS` (name -> module); each module has
``run(out_dir: Path, quick: bool) -> list[Path]`` returning the files it wrote. Inputs come with
the installed packages (skimage sample images, synthesized data, random-weight models), so the
demo runs offline on a fresh machine.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .._files import write_text_atomic

SECTIONS: dict[str, str] = {
    "distance": "vision_kernels.demo.distance",
    "clip": "vision_kernels.demo.clip",
    "cc_conv": "vision_kernels.demo.cc_conv",
    "patch_nn": "vision_kernels.demo.patch_nn",
    "pca": "vision_kernels.demo.pca",
    "clip_neurons": "vision_kernels.demo.clip_neurons",
    "vgpnn": "vision_kernels.demo.vgpnn",
}


def run_demo(
    out_dir: Path,
    *,
    sections: Sequence[str] | None = None,
    quick: bool = False,
    benchmarks: bool = True,
    full_benchmarks: bool = False,
    log: TextIO = sys.stdout,
) -> list[Path]:
    """Run the selected sections (all by default) and the benchmarks; return the files written."""
    chosen = list(sections) if sections else list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise ValueError(f"vision_kernels.demo: unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in chosen:
        start = time.perf_counter()
        print(f"== {name}", file=log, flush=True)
        module = importlib.import_module(SECTIONS[name])
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
        measurements = [m for m in measurements if families is None or m.family in families]
        table = format_table(measurements, limits)
        import json

        write_text_atomic((out_dir / "benchmarks.md"), table + "\n")
        write_text_atomic(
            (out_dir / "benchmarks.json"), json.dumps(report(measurements, limits), indent=2, default=str) + "\n"
        )
        written += [out_dir / "benchmarks.md", out_dir / "benchmarks.json"]
        print(table, file=log)
    return written
