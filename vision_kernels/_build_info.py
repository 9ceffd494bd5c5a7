"""``vision_kernels.build_info()``: how the installed package was built and what it can use now."""

from __future__ import annotations

from typing import Any

from . import _native
from ._version import __version__


def build_info() -> dict[str, Any]:
    """Describe the build and the machine.

    Returns a dict with:
        version: package version (Python side) and ``native_version`` (compiled core).
        cuda_compiled: whether CUDA kernels were compiled into ``vision_kernels._C``.
        cuda_architectures: list of SM architectures they were compiled for, e.g. ``[80, 86, 89, 90]``.
        cuda_runtime_version: CUDA runtime linked statically (e.g. 13000), or None.
        gpu_available: whether a GPU is usable right now (driver present, device visible, and
            CUDA kernels compiled); ``gpu_reason`` says why not.
        emulation_available: whether ``vision_kernels._C_emu`` (CUDA kernels on the host
            emulation harness) was built.
        openmp: whether the core uses OpenMP; ``num_threads``: threads its loops use, which
            follows ``torch.get_num_threads()``.
        cxx_compiler, cuda_compiler: compilers used.
        bindings: native binding groups registered (one or two per kernel family).
    """
    import torch

    native = _native.cpu_module()
    info = dict(native.build_info())
    _native.sync_threads(native)
    architectures = [int(a) for a in str(info.get("cuda_architectures", "")).split(",") if a.strip()]
    device_count, device_error = native.cuda_devices()
    if not info["cuda_compiled"]:
        gpu_available, reason = False, "CUDA kernels were not compiled"
    elif device_count == 0:
        gpu_available, reason = False, device_error or "no CUDA device"
    elif not torch.cuda.is_available():
        gpu_available, reason = False, "torch cannot use CUDA (CPU-only torch build?)"
    else:
        major, minor = torch.cuda.get_device_capability()
        capability = 10 * major + minor
        gpu_available = any(a <= capability and a // 10 == major for a in architectures)
        reason = "" if gpu_available else f"no kernels compiled for sm_{capability} (have {architectures})"
    return {
        "version": __version__,
        "native_version": info["version"],
        "cuda_compiled": bool(info["cuda_compiled"]),
        "cuda_architectures": architectures,
        "cuda_runtime_version": info.get("cuda_runtime_version"),
        "gpu_available": gpu_available,
        "gpu_reason": reason,
        "emulation_available": _native.emulation_available(),
        "openmp": bool(info["openmp"]),
        "num_threads": int(native.num_threads()),
        "cxx_compiler": info["cxx_compiler"],
        "cuda_compiler": info["cuda_compiler"] or None,
        "bindings": list(info["bindings"]),
    }
