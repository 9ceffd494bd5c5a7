#!/usr/bin/env python
"""Run the vision_kernels benchmarks: ``python benchmarks/run.py [--quick] [--json PATH]``.

Prints, per op and size, our time, the plain-PyTorch reference's time and the named anchors'
(faiss-cpu, torch, sklearn, ...), peak extra memory of each, the ratios, and the fraction of
this machine's fp32 matmul or copy ceiling, all measured in one run. The cases live in
vision_kernels/bench/cases/ (one module per op family) so that `vision-kernels demo` can run
them from an installed wheel too.
"""

import sys

from vision_kernels.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
