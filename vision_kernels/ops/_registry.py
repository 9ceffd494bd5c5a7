"""Kernel registration shared by every op module.

Each op is a ``torch.library.custom_op`` in the ``vision_kernels`` namespace whose default
implementation is the CPU kernel. Its CUDA kernel is written once as a *launch body*
``launch(native_module, stream, *op_args)`` that allocates outputs with torch on the inputs'
device and calls ``native_module.<name>_cuda(...)``. :func:`register_cuda` registers that body
twice:

* as the op's CUDA kernel, with ``vision_kernels._C`` and the current CUDA stream;
* as the op's *emulated* kernel, with ``vision_kernels._C_emu`` (the same CUDA kernel source run
  by the host harness) and stream 0, callable on CPU tensors through
  :func:`vision_kernels.testing.emulated`. This is how the tests execute every CUDA kernel on a
  machine without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _native

EMULATED_KERNELS: dict[str, Callable[..., Any]] = {}


def _first_tensor(args: tuple[Any, ...]) -> torch.Tensor:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    raise TypeError("vision_kernels: a CUDA kernel was called without any tensor argument")


def qualified_name(op: Any) -> str:
    """``"namespace::name"`` of a CustomOpDef, a torch.ops packet or overload, or that string."""
    if isinstance(op, str):
        return op
    for attribute in ("_qualname", "_qualified_op_name"):
        if hasattr(op, attribute):
            return str(getattr(op, attribute))
    if hasattr(op, "name"):
        return str(op.name()).split(".")[0]
    raise TypeError(f"vision_kernels: cannot tell the name of op {op!r}")


def register_cuda(op: Any, launch: Callable[..., Any]) -> None:
    """Register ``launch(native_module, stream, *args)`` as ``op``'s CUDA and emulated kernel."""
    name = qualified_name(op)

    def cuda_kernel(*args: Any) -> Any:
        anchor = _first_tensor(args)
        with torch.cuda.device(anchor.device):
            return launch(_native.cuda_module(), _native.cuda_stream(anchor), *args)

    def emulated_kernel(*args: Any) -> Any:
        anchor = _first_tensor(args)
        if anchor.device.type != "cpu":
            raise ValueError(f"{name}: the emulated CUDA kernel runs on CPU tensors, got {anchor.device}")
        return launch(_native.emulation_module(), 0, *args)

    op.register_kernel("cuda")(cuda_kernel)
    EMULATED_KERNELS[name] = emulated_kernel


def cpu_native() -> Any:
    """``vision_kernels._C`` with its thread count synced to ``torch.get_num_threads()``."""
    module = _native.cpu_module()
    _native.sync_threads(module)
    return module
