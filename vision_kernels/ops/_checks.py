"""The one place for argument checks in Python.

Every op validates its inputs here before touching the native core, with messages of one form:
``<function>: argument '<name>' <expected>, got <actual>``. The C++ core repeats the checks it
depends on (``csrc/common/checks.h``) with the same wording, so a direct native call cannot
crash either. Shape/dtype/device checks run in fake (meta) kernels too, so ``torch.compile``
reports bad input at trace time; value checks (``finite``) run in the real kernels only.

Example::

    check = ArgCheck("vision_kernels.sq_l2_distance")
    check.tensor(x, "x")
    check.rank(x, "x", 2, "[N, D]")
    check.floating(x, "x")
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Sequence
from typing import NoReturn

import torch

from .. import _native

FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.uint8: "uint8",
    torch.bool: "bool",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def shape_string(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


class ArgCheck:
    """Argument checks of one public function; every failure names function and argument."""

    def __init__(self, function: str) -> None:
        self.function = function

    def fail(self, name: str, message: str, error: type[Exception] = ValueError) -> NoReturn:
        raise error(f"{self.function}: argument '{name}' {message}")

    def tensor(self, value: object, name: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            self.fail(
                name,
                f"must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(value).__name__} "
                "(any object implementing __dlpack__ is accepted too)",
                TypeError,
            )
        assert isinstance(value, torch.Tensor)
        return value

    def rank(self, t: torch.Tensor, name: str, expected: int, layout: str = "") -> None:
        if t.dim() != expected:
            layout_text = f" {layout}" if layout else ""
            self.fail(
                name, f"must have {expected} dimensions{layout_text}, got {t.dim()} with shape {shape_string(t.shape)}"
            )

    def dtype(self, t: torch.Tensor, name: str, allowed: Sequence[torch.dtype]) -> None:
        if t.dtype not in allowed:
            names = ", ".join(dtype_name(d) for d in allowed)
            self.fail(name, f"must have dtype in {{{names}}}, got {dtype_name(t.dtype)}", TypeError)

    def floating(self, t: torch.Tensor, name: str) -> None:
        self.dtype(t, name, FLOATING)

    def same_dtype(self, a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
        if a.dtype != b.dtype:
            self.fail(
                b_name,
                f"must have the dtype of '{a_name}' ({dtype_name(a.dtype)}), got {dtype_name(b.dtype)}",
                TypeError,
            )

    def size(self, t: torch.Tensor, name: str, dim: int, expected: int, what: str = "") -> None:
        if t.shape[dim] != expected:
            what_text = f" ({what})" if what else ""
            self.fail(
                name, f"must have size {expected} in dimension {dim}{what_text}, got shape {shape_string(t.shape)}"
            )

    def at_least(self, t: torch.Tensor, name: str, dim: int, minimum: int, what: str = "") -> None:
        if t.shape[dim] < minimum:
            what_text = f" ({what})" if what else ""
            self.fail(
                name, f"must have size >= {minimum} in dimension {dim}{what_text}, got shape {shape_string(t.shape)}"
            )

    def shape(self, t: torch.Tensor, name: str, expected: Sequence[int], layout: str = "") -> None:
        if tuple(t.shape) != tuple(expected):
            layout_text = f" {layout}" if layout else ""
            self.fail(name, f"must have shape {shape_string(expected)}{layout_text}, got {shape_string(t.shape)}")

    def same_device(self, a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
        if a.device != b.device:
            raise ValueError(
                f"{self.function}: arguments '{a_name}' and '{b_name}' must be on the same device, "
                f"got {a.device} and {b.device}"
            )

    def same_devices(self, named: Iterable[tuple[str, object]], device_type: str | None = None) -> None:
        """Every tensor among ``named`` (``None`` skipped, lists of tensors entered) on one device.

        The first tensor is the anchor; ``device_type`` (``"cpu"``, ``"cuda"``) additionally requires
        the anchor to be on that kind of device. Used for EVERY tensor argument of every op (masks and
        optional tensors included) by the kernel registrations in ``ops/_registry.py``, so a mask on
        the meta device or on another GPU is refused before any pointer is read.
        """
        tensors = flatten_tensors(named)
        if not tensors:
            return
        anchor_name, anchor = tensors[0]
        for name, value in tensors[1:]:
            if value.device != anchor.device:
                raise ValueError(
                    f"{self.function}: arguments '{anchor_name}' and '{name}' must be on the same device, "
                    f"got {anchor.device} and {value.device}"
                )
        if device_type is not None and anchor.device.type != device_type:
            self.fail(anchor_name, f"must be on a {device_type} device for this kernel, got {anchor.device}")

    def integer(self, value: object, name: str, minimum: int | None = None) -> int:
        """``value`` as an int: Python/numpy ints and integer 0-d tensors; bools and floats are a TypeError."""
        if not is_integer(value):
            self.fail(name, f"must be an int, got {_kind(value)} {value!r}", TypeError)
        result = operator.index(value)  # type: ignore[arg-type]
        if minimum is not None and result < minimum:
            self.fail(name, f"must be >= {minimum}, got {result}")
        return result

    def integers(self, values: object, name: str) -> list[int]:
        """A sequence of ints (see :meth:`integer`), e.g. layer indices: ``[1.7]`` is a TypeError, not ``[1]``."""
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            self.fail(name, f"must be a sequence of ints, got {type(values).__name__} {values!r}", TypeError)
        result: list[int] = []
        for position, value in enumerate(values):
            if not is_integer(value):
                self.fail(name, f"must hold ints, got {_kind(value)} {value!r} at position {position}", TypeError)
            result.append(operator.index(value))
        return result

    def allocation(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device, name: str) -> None:
        """Refuse an output of ``shape`` that cannot fit in the memory of ``device``, before allocating it.

        ``name`` is the argument that determines the size (e.g. ``'scale'``). The limit is the device's
        total memory (physical RAM on the CPU); a 43 TiB request becomes one line with the shape.
        """
        size = dtype.itemsize
        for extent in shape:  # a plain loop: torch.compile traces this in public wrappers
            size *= int(extent)
        limit = device_memory(device)
        if limit is not None and size > limit:
            self.fail(
                name,
                f"gives an output of shape {shape_string(shape)} ({format_bytes(size)} of "
                f"{dtype_name(dtype)}), more than the {format_bytes(limit)} of memory of device {device}",
            )

    def finite(self, t: torch.Tensor, name: str) -> None:
        """Raise if ``t`` holds NaN or Inf, naming the first bad position and value."""
        if t.numel() == 0 or not t.is_floating_point():
            return
        if type(t) is torch.Tensor and t.is_cpu and t.dtype in FLOATING:
            if _native.cpu_module().all_finite(_native.tensor_ref(t)):  # one native pass, no temporaries
                return
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            position = tuple(int(i) for i in bad.nonzero()[0].tolist())
            value = t[position].item()
            self.fail(name, f"must be finite (no NaN or Inf), got {value} at index {position}")

    def all_finite(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        """:meth:`finite` for every ``(name, tensor)`` of ``named``, in order."""
        for name, tensor in named:
            self.finite(tensor, name)

    def positive(self, value: float, name: str) -> None:
        if not value > 0:
            self.fail(name, f"must be > 0, got {value}")

    def in_range(self, value: int, name: str, low: int, high: int) -> None:
        """``low <= value < high``."""
        if not low <= value < high:
            self.fail(name, f"must be in [{low}, {high}), got {value}", IndexError)

    def layer_indices(self, layers: Sequence[int], name: str, num_layers: int, most: int) -> None:
        """At most ``most`` entries, each a layer index in ``[0, num_layers)`` (IndexError otherwise)."""
        if len(layers) > most:
            self.fail(name, f"must list at most {most} layers, got {len(layers)}")
        for position, layer in enumerate(layers):
            if not 0 <= layer < num_layers:
                self.fail(
                    name,
                    f"must hold layer indices in [0, {num_layers}), got {layer} at position {position}",
                    IndexError,
                )

    def out_dtype(self, dtype: object, name: str = "out_dtype") -> None:
        """None or one of the floating dtypes an op can write (TypeError otherwise)."""
        if dtype is None:
            return
        if not isinstance(dtype, torch.dtype):
            self.fail(name, f"must be a torch.dtype or None, got {type(dtype).__name__}", TypeError)
        if dtype not in FLOATING:
            names = ", ".join(dtype_name(d) for d in FLOATING)
            self.fail(name, f"must be one of {{{names}}}, got {dtype_name(dtype)}", TypeError)

    def choice(self, value: object, name: str, allowed: Sequence[object]) -> None:
        if value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            self.fail(name, f"must be one of {options}, got {value!r}")


def _is_bool(value: object) -> bool:
    return (
        isinstance(value, bool)
        or type(value).__name__ == "bool_"
        or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)
    )


def _kind(value: object) -> str:
    return "bool" if _is_bool(value) else type(value).__name__


def is_integer(value: object) -> bool:
    """An int, numpy integer or integer 0-d tensor; never a bool or a float (even an integral one)."""
    if _is_bool(value):
        return False
    try:
        operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def flatten_tensors(named: Iterable[tuple[str, object]]) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor among ``named``: ``None`` skipped, list items named ``name[i]``."""
    found = []
    for name, value in named:
        if isinstance(value, torch.Tensor):
            found.append((name, value))
        elif isinstance(value, (list, tuple)):
            found += [(f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
    return found


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


_CPU_MEMORY = _physical_memory()  # read once: torch.compile traces the checks that use it


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes (physical RAM for the CPU), None when unknown (meta, ...)."""
    if device.type == "cpu":
        return _CPU_MEMORY
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def format_bytes(size: float) -> str:
    """``"1.5 GiB"``; sizes beyond PiB in scientific notation (``"2.0e+26 bytes"``)."""
    if size >= 1024**6:
        return f"{size:.1e} bytes"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"
