"""Benchmark harness: cases registered by each op family, timed and measured in one run.

A case is registered with :func:`case` on a setup function that builds its inputs and returns
:class:`Contenders`: our op, the plain-PyTorch reference, and named anchors (e.g. faiss-cpu,
torch.cdist). Each callable is warmed up, then timed over repeats (median), and its peak extra
memory measured once: resident-set high-water mark above the starting level on CPU (large
allocations are served by mmap so frees return memory and the mark is exact), or
``torch.cuda.max_memory_allocated`` on GPU. Ratios (reference / ours, anchor / ours) are what
we report: absolute times drift between runs, ratios measured in the same run do not.

The machine's ceilings are measured once per run: fp32 matmul GFLOP/s (torch.mm 2048^3) and
copy GB/s (256 MiB tensor copy, read + write). A case that states its FLOPs or bytes moved gets
its fraction of the matching ceiling.
"""

from __future__ import annotations

import ctypes
import gc
import math
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "case",
    "Contenders",
    "Case",
    "CASES",
    "Measurement",
    "ceilings",
    "run_case",
    "time_callable",
    "time_and_peak_once",
    "peak_memory",
    "LazyMetrics",
    "KeepLast",
]


class LazyMetrics(Mapping[str, float | str]):
    """Metrics computed on first read, i.e. after the timed runs, from a function of their outputs
    (recall, quality), so that no extra run is needed to obtain them."""

    def __init__(self, compute: Callable[[], dict[str, float | str]]) -> None:
        self._compute = compute
        self._values: dict[str, float | str] | None = None

    def _get(self) -> dict[str, float | str]:
        if self._values is None:
            self._values = self._compute()
        return self._values

    def __getitem__(self, key: str) -> float | str:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class KeepLast:
    """Wrap a contender so that its last result stays available to :class:`LazyMetrics`."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.last: Any = None

    def __call__(self) -> Any:
        self.last = self.fn()
        return self.last


@dataclass
class Contenders:
    """What one benchmark case compares.

    Attributes:
        ours: the vision_kernels op, called as a user would.
        reference: the plain-PyTorch reference (None if it cannot run at this size).
        anchors: named third-party baselines measured in the same run.
        flops: floating-point operations of one call (for the matmul-ceiling fraction).
        bytes_moved: bytes one call must read + write (for the copy-ceiling fraction).
        metrics: extra figures the case computes once (recall, PSNR, explained variance, ...).
        device: "cpu" or "cuda".
        single_run: contenders ("ours", "reference" or an anchor's name) too slow to repeat: timed by one
            call, without warm-up, whose peak memory is measured at the same time.
    """

    ours: Callable[[], Any]
    reference: Callable[[], Any] | None = None
    anchors: dict[str, Callable[[], Any]] = field(default_factory=dict)
    flops: float | None = None
    bytes_moved: float | None = None
    metrics: Mapping[str, float | str] = field(default_factory=dict)
    device: str = "cpu"
    single_run: tuple[str, ...] = ()


@dataclass
class Case:
    family: str  # the family id (csrc/<family>/), e.g. "patch_nn"
    name: str
    setup: Callable[[bool], Contenders]
    quick: bool  # included in --quick runs
    repeats: int
    module: str = ""  # the cases module that registered it, e.g. "patch_nn_video" (= its demo section)

    def selected_by(self, name: str) -> bool:
        """``--family name``: a family id selects all its modules' cases, a module name only its own."""
        return name in (self.family, self.module)


CASES: list[Case] = []


def case(
    family: str, name: str, *, quick: bool = True, repeats: int = 5
) -> Callable[[Callable[[bool], Contenders]], Callable[[bool], Contenders]]:
    """Register ``setup(quick: bool) -> Contenders`` as a benchmark case of ``family``."""

    def register(setup: Callable[[bool], Contenders]) -> Callable[[bool], Contenders]:
        module = setup.__module__.rsplit(".", 1)[-1]
        CASES.append(Case(family, name, setup, quick, repeats, module))
        return setup

    return register


# ---------------------------------------------------------------- memory

_libc: Any = None


def _configure_allocator() -> None:
    """Serve allocations >= 64 KiB by mmap so that frees return memory to the OS at once."""
    global _libc
    if _libc is not None:
        return
    try:
        _libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        _libc.mallopt(m_mmap_threshold, 64 * 1024)
    except OSError:
        _libc = False


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Peak extra memory (MiB) while ``fn()`` runs, above the level when it starts (NaN if unknown)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return peak / 2**20
    _configure_allocator()
    if _libc:
        _libc.malloc_trim(0)
    if not _reset_high_water_mark():
        return math.nan
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM") - before
    del result
    return max(peak, 0) / 1024


# ---------------------------------------------------------------- time


def time_callable(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall time (ms) of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


_ceilings: dict[str, float] = {}


def ceilings() -> dict[str, float]:
    """This machine's fp32 matmul GFLOP/s and copy GB/s, measured once per process."""
    if not _ceilings:
        a = torch.randn(2048, 2048)
        b = torch.randn(2048, 2048)
        ms = time_callable(lambda: torch.mm(a, b), repeats=5, warmup=2)
        _ceilings["matmul_gflops"] = 2 * 2048**3 / (ms * 1e-3) / 1e9
        source = torch.empty(64 * 2**20)  # 256 MiB
        source.fill_(1.0)
        target = torch.empty_like(source)
        ms = time_callable(lambda: target.copy_(source), repeats=5, warmup=2)
        _ceilings["copy_gbs"] = 2 * source.numel() * 4 / (ms * 1e-3) / 1e9
        del source, target
    return dict(_ceilings)


def time_and_peak_once(fn: Callable[[], Any], device: str = "cpu") -> tuple[float, float]:
    """Wall time (ms) and peak extra memory (MiB) of a single call of ``fn()`` (no warm-up)."""
    elapsed: list[float] = []
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed() -> Any:
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        elapsed.append(time.perf_counter() - start)
        return result

    peak = peak_memory(timed, device)
    return elapsed[0] * 1e3, peak


# ---------------------------------------------------------------- one case


@dataclass
class Measurement:
    family: str
    name: str
    ours_ms: float
    ours_peak_mib: float
    reference_ms: float | None
    reference_peak_mib: float | None
    anchors_ms: dict[str, float]
    anchors_peak_mib: dict[str, float]
    fraction_of_ceiling: float | None
    ceiling: str | None
    metrics: dict[str, float | str]
    module: str = ""  # the cases module (Case.module)

    @property
    def speedup_vs_reference(self) -> float | None:
        return None if self.reference_ms is None else self.reference_ms / self.ours_ms

    @property
    def memory_vs_reference(self) -> float | None:
        if self.reference_peak_mib is None or not self.ours_peak_mib:
            return None
        return self.reference_peak_mib / max(self.ours_peak_mib, 1e-3)

    def speedup_vs(self, anchor: str) -> float:
        return self.anchors_ms[anchor] / self.ours_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "module": self.module,
            "case": self.name,
            "ours_ms": self.ours_ms,
            "ours_peak_mib": self.ours_peak_mib,
            "reference_ms": self.reference_ms,
            "reference_peak_mib": self.reference_peak_mib,
            "speedup_vs_reference": self.speedup_vs_reference,
            "memory_ratio_vs_reference": self.memory_vs_reference,
            "anchors_ms": self.anchors_ms,
            "anchors_peak_mib": self.anchors_peak_mib,
            "speedup_vs_anchors": {k: self.speedup_vs(k) for k in self.anchors_ms},
            "fraction_of_ceiling": self.fraction_of_ceiling,
            "ceiling": self.ceiling,
            "metrics": self.metrics,
        }


def run_case(benchmark: Case, quick: bool) -> Measurement:
    contenders = benchmark.setup(quick)
    device = contenders.device
    repeats = max(2, benchmark.repeats // 2) if quick else benchmark.repeats

    def measure(fn: Callable[[], Any], name: str) -> tuple[float, float]:
        if name in contenders.single_run:
            return time_and_peak_once(fn, device)
        ms = time_callable(fn, repeats=repeats, device=device)
        return ms, peak_memory(fn, device)

    ours_ms, ours_peak = measure(contenders.ours, "ours")
    reference_ms = reference_peak = None
    if contenders.reference is not None:
        reference_ms, reference_peak = measure(contenders.reference, "reference")
    anchors_ms: dict[str, float] = {}
    anchors_peak: dict[str, float] = {}
    for anchor, fn in contenders.anchors.items():
        anchors_ms[anchor], anchors_peak[anchor] = measure(fn, anchor)

    fraction = ceiling_name = None
    limits = ceilings()
    if contenders.flops:
        fraction = contenders.flops / (ours_ms * 1e-3) / 1e9 / limits["matmul_gflops"]
        ceiling_name = "matmul"
    elif contenders.bytes_moved:
        fraction = contenders.bytes_moved / (ours_ms * 1e-3) / 1e9 / limits["copy_gbs"]
        ceiling_name = "copy"
    return Measurement(
        benchmark.family,
        benchmark.name,
        ours_ms,
        ours_peak,
        reference_ms,
        reference_peak,
        anchors_ms,
        anchors_peak,
        fraction,
        ceiling_name,
        dict(contenders.metrics),
        benchmark.module,
    )
