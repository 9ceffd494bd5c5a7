"""Helpers for parity tests of vision_kernels ops (used by python_tests/, usable by anyone).

* :func:`emulated` runs an op's *CUDA kernel* on CPU tensors through the host emulation harness
  (``vision_kernels._C_emu``): the kernel's own source, block by block, one host thread per
  CUDA thread. This is how CUDA kernels are executed in CI on machines without a GPU. With the
  environment variable ``VK_KERNEL_DEVICE=cuda`` (or ``cuda:N``) it runs the same kernel on the device
  instead (:func:`on_device`: inputs moved there, results brought back to the CPU), so that the same
  parity tests check the real CUDA kernels (``vision-kernels gpu-check``); ``VK_KERNEL_DEVICE=cpu`` routes
  them through the op's dispatch on CPU tensors (a check of that path on machines without a GPU).
* :func:`assert_low_precision_parity` is the fp16/bf16 contract: the kernel's error against a
  float64 ground truth is at most ``factor`` times the error of the plain-PyTorch reference run
  in the same low precision (as flash-attention's tests do), plus a small absolute floor.
* :func:`tolerances` gives the fp32/fp64 tolerances used across the test-suite.
* :func:`each_tensor_moved` and :class:`DLPackProducer` build bad-input cases: every tensor argument in
  turn on another device (the meta device by default), and a foreign array exposing only DLPack.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree

from . import _native

__all__ = [
    "emulated",
    "on_device",
    "kernel_device",
    "kernel_device_unavailable",
    "KERNEL_CALLS",
    "emulation_available",
    "tolerances",
    "assert_low_precision_parity",
    "max_abs_error",
    "each_tensor_moved",
    "DLPackProducer",
]


def emulation_available() -> bool:
    """Whether the CUDA kernels were built for the host emulation harness."""
    return _native.emulation_available()


KERNEL_DEVICE_VARIABLE = "VK_KERNEL_DEVICE"
KERNEL_CALLS: list[str] = []
"""Names of the ops whose kernel :func:`on_device` ran (``vision-kernels gpu-check`` attributes tests by them)."""


def kernel_device() -> str:
    """Where :func:`emulated` runs CUDA kernels: ``"emulation"`` (default), ``"cuda"``/``"cuda:N"`` or ``"cpu"``."""
    value = os.environ.get(KERNEL_DEVICE_VARIABLE, "").strip() or "emulation"
    if value not in ("emulation", "cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise ValueError(
            f"vision_kernels.testing: environment variable {KERNEL_DEVICE_VARIABLE} must be emulation, cuda, "
            f"cuda:N or cpu, got {value!r}"
        )
    return value


def kernel_device_unavailable(device: str) -> str | None:
    """Why CUDA kernels cannot run on ``device`` (None when they can)."""
    from . import build_info

    if device == "emulation":
        return None if emulation_available() else "vision_kernels._C_emu was not built"
    if device == "cpu":
        return None
    info = build_info()
    if not info["gpu_available"]:
        return f"no usable CUDA device: {info['gpu_reason']}"
    index = int(device[5:]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        return f"{device} does not exist ({torch.cuda.device_count()} CUDA devices)"
    return None


def _qualified(op: Any) -> str:
    import vision_kernels.ops  # noqa: F401  (imports every op module, registering its kernels)

    from .ops import _registry

    name = _registry.qualified_name(op)
    if name not in _registry.EMULATED_KERNELS:
        known = ", ".join(sorted(_registry.EMULATED_KERNELS))
        raise KeyError(f"vision_kernels.testing.emulated: no CUDA kernel registered for {name!r}; known: {known}")
    return name


def on_device(op: Any, device: str) -> Callable[..., Any]:
    """``op`` called through its dispatch on ``device`` with CPU arguments (like the emulated kernel, it refuses
    others): every tensor argument is moved to ``device`` (gradients flow back), the results come back to the CPU."""
    name = _qualified(op)
    namespace, op_name = name.split("::")
    packet = getattr(getattr(torch.ops, namespace), op_name)

    def to_device(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) and value.device.type == "cpu" else value

    def to_cpu(value: Any) -> Any:
        return value.cpu() if isinstance(value, torch.Tensor) else value

    def run(*args: Any, **kwargs: Any) -> Any:
        from .ops import _registry

        _registry.check_devices(name, args, kwargs, "cpu")  # the emulated kernel's contract: CPU arguments
        KERNEL_CALLS.append(name)
        moved_args, moved_kwargs = _pytree.tree_map(to_device, (args, kwargs))
        return _pytree.tree_map(to_cpu, packet(*moved_args, **moved_kwargs))

    return run


def emulated(op: Any) -> Callable[..., Any]:
    """The emulated CUDA kernel of ``op`` (an op name like ``"vision_kernels::sq_l2_distance"``
    or its ``torch.ops`` handle), taking the op's arguments as CPU tensors; on the device of
    ``VK_KERNEL_DEVICE`` when that is set (see the module docstring)."""
    from .ops import _registry

    name = _qualified(op)
    device = kernel_device()
    if device != "emulation":
        return on_device(name, device)
    return _registry.EMULATED_KERNELS[name]


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """``rtol``/``atol`` for comparing a kernel with its reference computed in the same dtype."""
    return {
        torch.float64: {"rtol": 1e-10, "atol": 1e-12},
        torch.float32: {"rtol": 1e-5, "atol": 1e-6},
        torch.float16: {"rtol": 2e-3, "atol": 1e-3},
        torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
    }[dtype]


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.numel() == 0:
        return 0.0
    return float((actual.double() - expected.double()).abs().max())


def assert_low_precision_parity(
    actual: torch.Tensor,
    reference_low: torch.Tensor,
    reference_exact: torch.Tensor,
    *,
    factor: float = 2.0,
    atol: float = 1e-5,
    what: str = "",
) -> None:
    """Assert ``|actual - exact| <= factor * |reference_low - exact| + atol`` (max norms).

    ``reference_low`` is the plain-PyTorch reference evaluated in the low precision (fp16/bf16),
    ``reference_exact`` the same in float64; the kernel may be at most ``factor`` times worse
    than PyTorch's own low-precision error.
    """
    if actual.shape != reference_exact.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(reference_exact.shape)}")
    ours = max_abs_error(actual, reference_exact)
    theirs = max_abs_error(reference_low, reference_exact)
    if not ours <= factor * theirs + atol:
        raise AssertionError(
            f"{what}: kernel error {ours:.3e} exceeds {factor} x the reference's own "
            f"low-precision error {theirs:.3e} (+ {atol:.1e})"
        )


def each_tensor_moved(arguments: dict[str, Any], device: str = "meta") -> list[tuple[str, dict[str, Any]]]:
    """``(name, arguments')`` for every tensor argument, ``arguments'`` having that one tensor on ``device``.

    For the rule that every op checks the device of EVERY tensor argument (masks, optional tensors):
    ``for name, moved in each_tensor_moved(kwargs): with pytest.raises(ValueError, match=name): op(**moved)``.
    """
    cases = []
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            cases.append((name, {**arguments, name: value.to(device)}))
    return cases


class DLPackProducer:
    """A minimal foreign array: it exposes only the DLPack protocol of the array it wraps.

    Stands for JAX arrays and other libraries' tensors in tests of ``accepts_arrays`` (ops take any
    DLPack producer through ``torch.from_dlpack``).
    """

    def __init__(self, array: Any) -> None:
        self._array = array

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self._array.__dlpack_device__()
