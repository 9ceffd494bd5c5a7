"""Bridge between torch tensors and the torch-free native core (``vision_kernels._C``).

The core receives each array as ``(data_ptr, dtype_code, shape, strides, device)`` with strides
in elements and ``device = -1`` for host memory (see ``csrc/common/pybind_tensor.h``); the
dtype codes match ``csrc/common/dtype.h``. Nothing outside ``vision_kernels.ops`` should need
this module: ops are the public interface, and a user never handles a raw pointer.

Two native modules may exist:

* ``_C``: the CPU kernels, plus the CUDA kernels when nvcc was found at build time.
* ``_C_emu``: the CUDA kernels' own source compiled for the host emulation harness
  (``csrc/common/cuda_emu.h``), used by the tests to execute every CUDA kernel without a GPU.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any

import torch

__all__ = [
    "DTYPE_CODES",
    "cpu_module",
    "cuda_module",
    "emulation_module",
    "tensor_ref",
    "sync_threads",
    "cuda_stream",
]

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.uint8: 6,
    torch.bool: 7,
}

_lock = threading.Lock()
_modules: dict[str, ModuleType | None] = {}
_import_errors: dict[str, BaseException] = {}


def _load(name: str) -> ModuleType | None:
    if name in _modules:  # loaded (or failed) before: no lock on the per-call path
        return _modules[name]
    with _lock:
        if name not in _modules:
            try:
                _modules[name] = importlib.import_module(f"vision_kernels.{name}")
            except ImportError as error:  # reported by the accessor that needed it
                _modules[name] = None
                _import_errors[name] = error
        return _modules[name]


def _required(name: str, error: type[Exception], message: str) -> ModuleType:
    """Module ``name`` or ``error(message)`` with ``{}`` replaced by the import error."""
    module = _load(name)
    if module is None:
        raise error(message.format(_import_errors.get(name)))
    return module


def cpu_module() -> ModuleType:
    """The compiled core ``vision_kernels._C`` (raises ImportError with a fix if it is missing)."""
    return _required(
        "_C",
        ImportError,
        "vision_kernels: the compiled core vision_kernels._C could not be imported ({}). Install the package "
        "with `pip install .` (or `make test`) instead of importing it from a source checkout that was never built.",
    )


_cuda_compiled: bool | None = None


def cuda_module() -> ModuleType:
    """``_C`` when it carries CUDA kernels, else a RuntimeError explaining how to get them."""
    global _cuda_compiled
    module = cpu_module()
    if _cuda_compiled is None:  # read once: every CUDA kernel call asks
        _cuda_compiled = bool(module.build_info()["cuda_compiled"])
    if not _cuda_compiled:
        raise RuntimeError(
            "vision_kernels was built without CUDA kernels (no nvcc at build time, or VK_CUDA=OFF); "
            "rebuild with nvcc on PATH and VK_CUDA=ON to run ops on CUDA tensors"
        )
    return module


def emulation_module() -> ModuleType:
    """``_C_emu``: the CUDA kernels compiled for the host emulation harness."""
    return _required(
        "_C_emu",
        RuntimeError,
        "vision_kernels._C_emu is not available: it is built when the CUDA toolkit headers are found at build "
        "time ({})",
    )


def emulation_available() -> bool:
    """Whether ``_C_emu`` was built and imports."""
    return _load("_C_emu") is not None


def tensor_ref(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...], int]:
    """The core's view of ``tensor``: (pointer, dtype code, shape, strides, device ordinal or -1)."""
    device = -1 if tensor.is_cpu else int(tensor.device.index or 0)
    return (tensor.data_ptr(), DTYPE_CODES[tensor.dtype], tensor.shape, tensor.stride(), device)  # Size is a tuple


_thread_setting = -1


def sync_threads(module: ModuleType) -> None:
    """Make the core's parallel loops use ``torch.get_num_threads()`` threads."""
    global _thread_setting
    threads = torch.get_num_threads()
    if threads != _thread_setting:
        module.set_num_threads(threads)
        _thread_setting = threads


def cuda_stream(tensor: torch.Tensor) -> int:
    """Handle of the current CUDA stream on ``tensor``'s device (0 for host tensors)."""
    if tensor.device.type != "cuda":
        return 0
    return int(torch.cuda.current_stream(tensor.device).cuda_stream)


def native_build_info() -> dict[str, Any]:
    """``_C.build_info()`` as a plain dict."""
    return dict(cpu_module().build_info())
