"""``vision_kernels.build_info()``: how the installed package was built and what it can use now.

Whether a GPU is usable is decided by :func:`diagnose_gpu` from two plain records, the build
(:class:`CudaBuild`) and what the machine shows (:class:`GpuProbe`), so that the decision is
tested with fakes on machines without a GPU. The first failing condition is the reason:

1. the CUDA kernels were not compiled (no nvcc at build time, or ``VK_CUDA=OFF``);
2. no NVIDIA driver (``libcuda.so.1`` cannot be loaded);
3. the driver is too old for the toolkit: the CUDA runtime is linked statically, so the driver
   must support the build's CUDA major version, ``driver // 1000 >= runtime // 1000`` (CUDA's
   minor-version compatibility);
4. no CUDA device is visible (``CUDA_VISIBLE_DEVICES``, or the runtime's own error);
5. torch cannot use CUDA (a CPU-only torch);
6. no device has code it can run. A device of compute capability ``M.m`` runs SASS ``sm_Mk`` with
   ``k <= m`` (same major), and PTX ``compute_XY`` with ``XY <= Mm`` which the driver compiles at
   load time (so the embedded PTX of the newest architecture serves newer GPUs), provided the
   driver is at least the toolkit that wrote the PTX. Arch-specific code (``sm_90a``) runs only
   on that exact architecture.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

from . import _native
from ._version import __version__

__all__ = ["CudaBuild", "GpuDiagnosis", "GpuProbe", "build_info", "diagnose_gpu"]

# Oldest Linux driver of each CUDA major version (NVIDIA's CUDA compatibility table).
MINIMUM_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


@dataclass(frozen=True)
class CudaBuild:
    """What was compiled: ``sass`` and ``ptx`` are architectures such as ``"80"`` or ``"90a"``."""

    compiled: bool
    runtime_version: int | None = None  # CUDART_VERSION of the static runtime, e.g. 13000 for 13.0
    sass: tuple[str, ...] = ()
    ptx: tuple[str, ...] = ()

    @classmethod
    def from_targets(cls, compiled: bool, runtime_version: int | None, targets: str) -> CudaBuild:
        """From the build's text ``"sm_80,compute_80,sm_90,compute_90"`` (older builds: ``"80,90"``,
        which CMake compiled as SASS and PTX of each)."""
        sass, ptx = [], []
        for target in (t.strip() for t in targets.split(",") if t.strip()):
            kind, _, arch = target.rpartition("_")
            if kind in ("", "sm"):
                sass.append(arch)
            if kind in ("", "compute"):
                ptx.append(arch)
        return cls(compiled, runtime_version, tuple(sass), tuple(ptx))


@dataclass(frozen=True)
class GpuProbe:
    """What the machine shows now."""

    driver_version: int | None  # cuDriverGetVersion(), e.g. 12040 for a driver of CUDA 12.4; None: no driver
    device_count: int  # cudaGetDeviceCount() of the module's runtime
    device_error: str = ""  # the runtime's error text when device_count is 0
    torch_cuda: bool = False  # torch.cuda.is_available()
    capabilities: tuple[tuple[int, int], ...] = ()  # (major, minor) of each device torch sees


@dataclass(frozen=True)
class GpuDiagnosis:
    available: bool
    reason: str  # empty when available
    devices: tuple[str, ...] = ()  # one line per device: "cuda:0 sm_86: SASS sm_80"


def _version_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def _arch_number(arch: str) -> tuple[int, str]:
    match = re.fullmatch(r"(\d+)([a-z]?)", arch)
    if match is None:
        raise ValueError(f"vision_kernels.build_info: cannot read CUDA architecture {arch!r}")
    return int(match.group(1)), match.group(2)


def _code_for(capability: tuple[int, int], build: CudaBuild, ptx_allowed: bool) -> str | None:
    """The compiled code a device of ``capability`` runs (SASS preferred), or None."""
    major, minor = capability
    device = 10 * major + minor
    for arch in sorted(build.sass, key=_arch_number, reverse=True):
        number, suffix = _arch_number(arch)
        same_family = number // 10 == major and number % 10 <= minor
        if (suffix == "a" and number == device) or (suffix != "a" and same_family):
            return f"SASS sm_{arch}"
    if ptx_allowed:
        for arch in sorted(build.ptx, key=_arch_number, reverse=True):
            number, suffix = _arch_number(arch)
            if (suffix == "a" and number == device) or (suffix != "a" and number <= device):
                return f"PTX compute_{arch} (compiled by the driver at load time)"
    return None


def diagnose_gpu(build: CudaBuild, probe: GpuProbe) -> GpuDiagnosis:
    """Whether a GPU is usable, and the first reason why not (see the module docstring)."""
    if not build.compiled:
        return GpuDiagnosis(False, "CUDA kernels were not compiled (no nvcc at build time, or VK_CUDA=OFF)")
    if probe.driver_version is None:
        return GpuDiagnosis(False, "no NVIDIA driver: libcuda.so.1 could not be loaded")
    runtime = build.runtime_version
    if runtime is not None and probe.driver_version // 1000 < runtime // 1000:
        needed = runtime // 1000
        have = probe.driver_version // 1000
        return GpuDiagnosis(
            False,
            f"NVIDIA driver too old: it supports CUDA up to {_version_text(probe.driver_version)}, the kernels "
            f"were built with CUDA {_version_text(runtime)}, which needs driver >= "
            f"{MINIMUM_DRIVER.get(needed, f'of CUDA {needed}')}; update the driver, or use a build made with "
            f"the nvcc of CUDA {have} (VK_CUDA_MAJOR={have}) and the extra [gpu-cu{have}]",
        )
    if probe.device_count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        detail = probe.device_error or "no CUDA device"
        if visible is not None:
            detail += f" (CUDA_VISIBLE_DEVICES={visible!r})"
        return GpuDiagnosis(False, f"no CUDA device visible: {detail}")
    if not probe.torch_cuda:
        return GpuDiagnosis(False, "torch cannot use CUDA (a CPU-only torch build?), so no CUDA tensors to run on")
    # PTX written by toolkit X.Y compiles only on a driver of X.Y or newer.
    ptx_allowed = runtime is None or probe.driver_version >= runtime
    devices = []
    usable = False
    for index, capability in enumerate(probe.capabilities):
        code = _code_for(capability, build, ptx_allowed)
        usable = usable or code is not None
        arch = f"sm_{10 * capability[0] + capability[1]}"
        devices.append(f"cuda:{index} {arch}: {code or 'no compiled code'}")
    if usable:
        return GpuDiagnosis(True, "", tuple(devices))
    built = ", ".join([f"sm_{a}" for a in build.sass] + [f"compute_{a}" for a in build.ptx]) or "nothing"
    arches = ";".join(sorted({str(10 * c[0] + c[1]) for c in probe.capabilities}))
    reason = f"architecture not compiled: {'; '.join(devices) or 'no device capability'}; this build has {built}"
    if not ptx_allowed and build.ptx:
        reason += f" (its PTX needs a driver of CUDA >= {_version_text(runtime or 0)})"
    return GpuDiagnosis(False, f"{reason}; rebuild with CUDAARCHS={arches}", tuple(devices))


def _driver_version() -> int | None:
    """cuDriverGetVersion() of the installed driver, or None when there is none."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if library.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return int(version.value)
    return None


def _probe(native: Any) -> GpuProbe:
    import torch

    device_count, device_error = native.cuda_devices()
    torch_cuda = bool(torch.cuda.is_available())
    count = torch.cuda.device_count() if torch_cuda else 0
    capabilities = tuple(torch.cuda.get_device_capability(i) for i in range(count))
    return GpuProbe(_driver_version(), int(device_count), str(device_error), torch_cuda, capabilities)


def build_info() -> dict[str, Any]:
    """Describe the build and the machine.

    Returns a dict with:
        version: package version (Python side) and ``native_version`` (compiled core).
        cuda_compiled: whether CUDA kernels were compiled into ``vision_kernels._C``.
        cuda_version: CUDA version of the build (its nvcc and statically linked runtime), e.g.
            ``"13.0"``, or None; ``cuda_runtime_version`` the same as an int (13000);
            ``gpu_extra``: the extra with the matching CUDA packages, e.g. ``"gpu-cu13"``.
        cuda_architectures: SM architectures with compiled SASS, e.g. ``[80, 86, 89, 90]``;
            ``cuda_ptx_architectures``: those with embedded PTX (runs on newer GPUs too);
            ``cuda_targets``: the raw list, e.g. ``["sm_80", "compute_80", ...]``.
        gpu_available: whether a GPU is usable right now; ``gpu_reason`` says why not (no
            kernels compiled, no driver, driver too old, no device, CPU-only torch,
            architecture not compiled); ``gpu_devices`` which code each device runs;
            ``cuda_driver_version``: cuDriverGetVersion() (e.g. 13000) or None.
        emulation_available: whether ``vision_kernels._C_emu`` (CUDA kernels on the host
            emulation harness) was built; release wheels leave it out.
        openmp: whether the core uses OpenMP; ``num_threads``: threads its loops use, which
            follows ``torch.get_num_threads()``.
        cxx_compiler, cuda_compiler: compilers used.
        bindings: native binding groups registered (one or two per kernel family).
    """
    native = _native.cpu_module()
    info = dict(native.build_info())
    _native.sync_threads(native)
    runtime = info.get("cuda_runtime_version")
    runtime = int(runtime) if runtime is not None else None
    build = CudaBuild.from_targets(bool(info["cuda_compiled"]), runtime, str(info.get("cuda_architectures", "")))
    probe = _probe(native) if build.compiled else GpuProbe(None, 0)
    diagnosis = diagnose_gpu(build, probe)
    return {
        "version": __version__,
        "native_version": info["version"],
        "cuda_compiled": build.compiled,
        "cuda_version": _version_text(runtime) if runtime is not None else None,
        "cuda_runtime_version": runtime,
        "gpu_extra": f"gpu-cu{runtime // 1000}" if runtime is not None else None,
        "cuda_architectures": sorted(_arch_number(a)[0] for a in build.sass),
        "cuda_ptx_architectures": sorted(_arch_number(a)[0] for a in build.ptx),
        "cuda_targets": [f"sm_{a}" for a in build.sass] + [f"compute_{a}" for a in build.ptx],
        "cuda_driver_version": probe.driver_version,
        "gpu_available": diagnosis.available,
        "gpu_reason": diagnosis.reason,
        "gpu_devices": list(diagnosis.devices),
        "emulation_available": _native.emulation_available(),
        "openmp": bool(info["openmp"]),
        "num_threads": int(native.num_threads()),
        "cxx_compiler": info["cxx_compiler"],
        "cuda_compiler": info["cuda_compiler"] or None,
        "bindings": list(info["bindings"]),
    }
