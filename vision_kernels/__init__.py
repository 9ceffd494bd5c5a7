"""vision_kernels: compiled C++/CUDA kernels for vision research methods, as PyTorch ops.

Subpackages:
    ops         accelerated ops (torch.library custom ops, CPU and CUDA kernels)
    reference   plain-PyTorch ground truth of every op
    testing     helpers for parity tests (tolerances, emulated CUDA kernels)
    bench       the benchmark harness behind ``python benchmarks/run.py``
    demo        ``vision-kernels demo``

Each method family (CLIP decomposition, GPNN/VGPNN, weights2weights, continuous convolution)
lives in its own subpackage and is imported on demand.
"""

from __future__ import annotations

from ._build_info import build_info
from ._progress import progress_enabled, set_progress
from ._version import __version__

__all__ = ["__version__", "build_info", "ops", "set_progress", "progress_enabled"]


def __getattr__(name: str) -> object:
    # Import subpackages lazily so `import vision_kernels` stays light.
    import importlib

    if name in {"ops", "reference", "testing", "bench", "demo", "cli"}:
        return importlib.import_module(f"vision_kernels.{name}")
    raise AttributeError(f"module 'vision_kernels' has no attribute {name!r}")
