"""Benchmark harness and cases; run with ``python benchmarks/run.py`` or ``vision-kernels bench``.

Each op family registers its cases in ``vision_kernels/bench/cases/<family>.py`` with
:func:`vision_kernels.bench.harness.case`; the cases package is discovered automatically.
"""

from .harness import Contenders, case

__all__ = ["Contenders", "case"]
