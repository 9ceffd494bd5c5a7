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

Devices of EVERY tensor argument (optional ones and masks included) are checked here, once for all
ops, before a kernel body runs: the dispatcher picks the kernel from the union of the arguments'
devices, so a CPU tensor next to a meta mask reaches the fake kernel and a CPU tensor next to a CUDA
one reaches the CUDA kernel. :func:`register_cuda` and :func:`register_fake` therefore refuse any
mix of devices (naming both arguments), and the CUDA / emulated kernels a tensor on the wrong kind of
device, whatever the op's own checks cover.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from .. import _native
from ._checks import ArgCheck

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


def public_name(op: Any) -> str:
    """``"vision_kernels.name"``: how error messages name the op (its public function)."""
    return qualified_name(op).replace("::", ".")


def argument_names(op: Any) -> tuple[str, ...]:
    """The op's argument names, in schema order."""
    return _schema_names(qualified_name(op))


@functools.cache
def _schema_names(name: str) -> tuple[str, ...]:
    namespace, op_name = name.split("::")
    packet = getattr(getattr(torch.ops, namespace), op_name)
    return tuple(argument.name for argument in packet.default._schema.arguments)


def check_devices(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any], device_type: str | None = None) -> None:
    """Every tensor argument of a call of ``op`` on one device (of type ``device_type`` if given)."""
    named = list(zip(argument_names(op), args, strict=False)) + list(kwargs.items())
    ArgCheck(public_name(op)).same_devices(named, device_type)


def register_fake(op: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fake`` as ``op``'s fake (meta) kernel, after the device check of every argument.

    The dispatcher sends a call with one meta tensor among CPU tensors to the fake kernel, which would
    otherwise return uninitialized CPU tensors as results.
    """

    def decorate(fake: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fake)
        def checked(*args: Any, **kwargs: Any) -> Any:
            check_devices(op, args, kwargs)
            return fake(*args, **kwargs)

        op.register_fake(checked)
        return fake

    return decorate


def register_cuda(op: Any, launch: Callable[..., Any]) -> None:
    """Register ``launch(native_module, stream, *args)`` as ``op``'s CUDA and emulated kernel."""
    name = qualified_name(op)

    def cuda_kernel(*args: Any) -> Any:
        check_devices(op, args, {}, "cuda")
        anchor = _first_tensor(args)
        with torch.cuda.device(anchor.device):
            return launch(_native.cuda_module(), _native.cuda_stream(anchor), *args)

    def emulated_kernel(*args: Any) -> Any:
        check_devices(op, args, {}, "cpu")
        return launch(_native.emulation_module(), 0, *args)

    op.register_kernel("cuda")(cuda_kernel)
    EMULATED_KERNELS[name] = emulated_kernel


def cpu_native() -> Any:
    """``vision_kernels._C`` with its thread count synced to ``torch.get_num_threads()``."""
    module = _native.cpu_module()
    _native.sync_threads(module)
    return module
