"""numpy (CPU), cupy (GPU) and any DLPack producer as op inputs.

torch tensors are the primary interface. An op decorated with :func:`accepts_arrays` also takes, for
the named arguments:

* numpy arrays: wrapped without a copy (``torch.from_numpy``; read-only or negatively strided arrays
  are copied); the result comes back as numpy arrays;
* cupy arrays: wrapped through DLPack; the result comes back as cupy arrays;
* any other object implementing the DLPack protocol (``__dlpack__`` and ``__dlpack_device__``: JAX
  arrays, TensorFlow / MXNet / PaddlePaddle tensors, numpy-like libraries): wrapped with
  ``torch.from_dlpack`` (no copy); the result comes back as **torch tensors** (convert it with your
  library's own ``from_dlpack``).

The kind of the result is that of the first non-torch array argument. Anything else (lists, scalars)
is a TypeError naming the function and the argument.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _kind(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return "torch"
    module = type(value).__module__.split(".")[0]
    if module == "numpy" and hasattr(value, "__array_interface__"):
        return "numpy"
    if module == "cupy":
        return "cupy"
    if hasattr(value, "__dlpack__"):
        return "dlpack"
    return "other"


def to_tensor(value: Any, function: str, name: str) -> torch.Tensor:
    """A torch tensor from a torch tensor, numpy array, cupy array or DLPack producer (no copy when possible)."""
    kind = _kind(value)
    if kind == "torch":
        return value
    if kind == "numpy":
        import numpy as np

        array = value
        if not array.flags.writeable or any(s < 0 for s in array.strides):
            array = np.array(array, copy=True)
        return torch.from_numpy(array)
    if kind in ("cupy", "dlpack"):
        try:
            return torch.from_dlpack(value)
        except (AttributeError, TypeError, RuntimeError, BufferError, ValueError) as error:
            raise TypeError(
                f"{function}: argument '{name}' implements __dlpack__ but torch.from_dlpack cannot import it "
                f"({type(value).__name__}: {error})"
            ) from error
    raise TypeError(
        f"{function}: argument '{name}' must be a torch.Tensor, numpy.ndarray or cupy.ndarray, got "
        f"{type(value).__name__} (any object implementing __dlpack__ is accepted too)"
    )


def from_tensor(tensor: torch.Tensor, kind: str) -> Any:
    """Return ``tensor`` as the array kind the caller passed in (shares memory); torch for other DLPack kinds."""
    if kind == "numpy":
        return tensor.detach().cpu().numpy()
    if kind == "cupy":
        import cupy

        return cupy.from_dlpack(tensor.detach())
    return tensor


def _convert_result(result: Any, kind: str) -> Any:
    if isinstance(result, torch.Tensor):
        return from_tensor(result, kind)
    if isinstance(result, tuple) and not hasattr(result, "_fields"):
        return tuple(_convert_result(r, kind) for r in result)
    if isinstance(result, tuple):  # NamedTuple: convert field by field, keep the type
        return type(result)(*(_convert_result(r, kind) for r in result))
    return result


def accepts_arrays(*names: str) -> Callable[[F], F]:
    """Decorator: let the arguments ``names`` of a public op be numpy or cupy arrays or DLPack producers too."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        positions = {name: list(signature.parameters).index(name) for name in names}
        public_name = f"vision_kernels.{function.__name__}"

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = [args[positions[n]] if positions[n] < len(args) else kwargs.get(n) for n in names]
            if all(v is None or isinstance(v, torch.Tensor) for v in values):
                return function(*args, **kwargs)
            kind = next(_kind(v) for v in values if v is not None and not isinstance(v, torch.Tensor))
            arguments = list(args)
            for name, value in zip(names, values, strict=True):
                if value is None:
                    continue
                tensor = to_tensor(value, public_name, name)
                if positions[name] < len(arguments):
                    arguments[positions[name]] = tensor
                else:
                    kwargs[name] = tensor
            return _convert_result(function(*arguments, **kwargs), kind)

        return wrapper  # type: ignore[return-value]

    return decorate
