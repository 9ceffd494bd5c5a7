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

from collections.abc import Sequence

import torch

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

    def fail(self, name: str, message: str, error: type[Exception] = ValueError) -> None:
        raise error(f"{self.function}: argument '{name}' {message}")

    def tensor(self, value: object, name: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            self.fail(
                name, f"must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(value).__name__}", TypeError
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

    def finite(self, t: torch.Tensor, name: str) -> None:
        """Raise if ``t`` holds NaN or Inf, naming the first bad position and value."""
        if t.numel() == 0 or not t.is_floating_point():
            return
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            position = tuple(int(i) for i in bad.nonzero()[0].tolist())
            value = t[position].item()
            self.fail(name, f"must be finite (no NaN or Inf), got {value} at index {position}")

    def positive(self, value: float, name: str) -> None:
        if not value > 0:
            self.fail(name, f"must be > 0, got {value}")

    def in_range(self, value: int, name: str, low: int, high: int) -> None:
        """``low <= value < high``."""
        if not low <= value < high:
            self.fail(name, f"must be in [{low}, {high}), got {value}", IndexError)

    def choice(self, value: object, name: str, allowed: Sequence[object]) -> None:
        if value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            self.fail(name, f"must be one of {options}, got {value!r}")
