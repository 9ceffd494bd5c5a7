"""Declare an op once: one ``prepare`` gives the custom op, its CPU, CUDA, emulated and fake kernels.

An op is a function ``prepare(target, *op_args) -> Native[R]`` decorated with :func:`declare`:

* its parameters after ``target`` (with their type hints) are the op's schema, inferred once by
  ``torch.library.custom_op``; ``R`` in ``Native[R]`` is the op's result type (``Tensor`` or
  ``tuple[Tensor, Tensor]``);
* its body validates the arguments (shapes, dtypes, values when ``target.real``), allocates the
  outputs and the workspace with torch on the inputs' device, and returns
  ``Native(outputs, args, workspace)``: ``args`` is the native argument tuple (tensors, ``None``,
  ints, floats, bools, lists of ints), ``workspace`` the scratch tensors the native entry point
  takes after ``args``.

From it the machinery makes four kernels that all run ``prepare`` first:

=========== ====================================================== =====================================
kernel      native call                                            ``target``
=========== ====================================================== =====================================
CPU         ``_C.<native>_cpu(*args, *workspace)``                 ``Target.CPU``
CUDA        ``_C.<native>_cuda(*args, *workspace, stream)``        ``Target.CUDA`` (current stream)
emulated    ``_C_emu.<native>_cuda(*args, *workspace, 0)``         ``Target.EMULATED`` (CPU tensors)
fake        none: ``prepare``'s allocation on fake/meta tensors    ``Target.FAKE`` (skip value checks)
=========== ====================================================== =====================================

Tensors among ``args`` and ``workspace`` are converted with :func:`vision_kernels._native.tensor_ref`
(``None`` stays ``None``). Every kernel first checks that all tensor arguments of the call (optional
ones included) are on one device of the kernel's kind (:meth:`ArgCheck.same_devices`). The native
entry points of both devices therefore take ONE argument order, workspace and stream last, declared once
in C++ (``csrc/<family>/<family>_ops.h``, see docs/DEVELOPING.md).

Fast path: :meth:`DeclaredOp.__call__` runs the CPU kernel directly (no dispatcher round trip) when that
is what the dispatcher would do anyway: CPU tensors only, no tensor needing a gradient, no tracing
(``torch.compile``, fake tensors, dispatch or function modes, functorch transforms). Everything else goes
through ``torch.ops.vision_kernels.<name>``.

Worked example (``vision_kernels/ops/distance.py``)::

    @declare("vision_kernels::sq_l2_distance")
    def sq_l2_distance_op(target: Target, x: Tensor, y: Tensor, check_finite: bool) -> Native[Tensor]:
        check = ArgCheck(FUNCTION)
        check.rank(x, "x", 2, "[N, D]")
        ...                                             # shape / dtype checks: every kernel
        if check_finite and target.real:                # value checks: real kernels only
            check.finite(x, "x")
        out = x.new_empty((x.shape[0], y.shape[0]))     # [N, M]
        return Native(out, args=(x, y, out))            # -> _C.sq_l2_distance_cpu(x, y, out)
                                                        #    _C.sq_l2_distance_cuda(x, y, out, stream)

    sq_l2_distance_op.register_autograd(_backward, setup_context=_setup_context)   # as on a custom op

    def sq_l2_distance(x, y, *, check_finite=True):     # the public wrapper (docstring, defaults)
        return sq_l2_distance_op(x, y, check_finite)

On the C++ side (``csrc/distance/distance_ops.h``) the argument list is written once::

    #define VK_SQ_L2_DISTANCE_ARGS const TensorRef &x, const TensorRef &y, const TensorRef &out
    void sq_l2_distance_cpu(VK_SQ_L2_DISTANCE_ARGS);
    void sq_l2_distance_cuda(VK_SQ_L2_DISTANCE_ARGS, std::uintptr_t stream);

and bound without restating it: ``VK_BIND_OP(module, sq_l2_distance_cpu, doc)`` in ``bind_cpu.cpp``.
Adding an argument: the prepare signature, its ``args`` tuple, the ``_ARGS`` macro, and its use in the
CPU and the CUDA bodies (plus the public wrapper when users pass it).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch

from .. import _native
from ._checks import ArgCheck, flatten_tensors
from ._registry import EMULATED_KERNELS, cpu_native

__all__ = ["Target", "Native", "Backend", "DeclaredOp", "declare"]

R = TypeVar("R")


class Target:
    """Which kernel runs ``prepare``: ``cpu``, ``cuda``, ``emulated`` (the CUDA source on the host) or ``fake``."""

    CPU: Target
    CUDA: Target
    EMULATED: Target
    FAKE: Target

    __slots__ = ("name", "real", "cuda_source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.real = name != "fake"  # values can be read (NaN checks, value-dependent choices)
        self.cuda_source = name in ("cuda", "emulated")  # the CUDA entry point runs (its workspace)

    def __repr__(self) -> str:
        return f"Target.{self.name.upper()}"


Target.CPU = Target("cpu")
Target.CUDA = Target("cuda")
Target.EMULATED = Target("emulated")
Target.FAKE = Target("fake")


class Backend:
    """The native entry points one kernel calls: ``call(stem, *args, workspace=...)`` runs
    ``<stem>_cpu(*args, *workspace)`` or ``<stem>_cuda(*args, *workspace, stream)`` of its module.

    Ops whose work is several native calls with torch in between (``pca_project``'s blocked GEMM path)
    return ``Native(outputs, run=...)`` and make the calls themselves through the backend they are given.
    """

    __slots__ = ("module", "stream", "suffix", "cuda_source")

    def __init__(self, module: Any, stream: int | None) -> None:
        self.module = module
        self.stream = stream  # None: the CPU entry points
        self.suffix = "_cpu" if stream is None else "_cuda"
        self.cuda_source = stream is not None

    @staticmethod
    def for_tensor(tensor: torch.Tensor) -> Backend:
        """The CPU entry points for a host tensor, else the CUDA ones on the current stream."""
        if tensor.device.type == "cpu":
            return Backend(cpu_native(), None)
        return Backend(_native.cuda_module(), _native.cuda_stream(tensor))

    def call(self, stem: str, *args: Any, workspace: tuple[torch.Tensor, ...] = ()) -> None:
        refs = [_ref(a) for a in args] + [_native.tensor_ref(w) for w in workspace]
        if self.stream is not None:
            refs.append(self.stream)
        getattr(self.module, stem + self.suffix)(*refs)


class Native(Generic[R]):
    """What ``prepare`` returns: the op's ``outputs``, the native ``args`` and the ``workspace`` tensors.

    Or ``run(backend) -> outputs`` making the native calls itself; ``outputs`` is then what the fake
    kernel returns (same shapes and dtypes).
    """

    __slots__ = ("outputs", "args", "workspace", "run")

    def __init__(
        self,
        outputs: R,
        args: tuple[Any, ...] = (),
        workspace: tuple[torch.Tensor, ...] = (),
        run: Callable[[Backend], R] | None = None,
    ) -> None:
        self.outputs = outputs
        self.args = args
        self.workspace = workspace
        self.run = run


def _ref(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _native.tensor_ref(value)
    return value


def _result_type(prepare: Callable[..., Any]) -> Any:
    hints = typing.get_type_hints(prepare)
    returned = hints.get("return")
    if typing.get_origin(returned) is not Native:
        raise TypeError(f"declare: {prepare.__name__} must be annotated '-> Native[<result type>]', got {returned}")
    return typing.get_args(returned)[0]


def _schema_prototype(prepare: Callable[..., Any], body: Callable[..., Any]) -> Callable[..., Any]:
    """``body`` with ``prepare``'s signature minus ``target`` and ``R`` as return type (the schema's source)."""
    hints = typing.get_type_hints(prepare)
    parameters = list(inspect.signature(prepare).parameters.values())[1:]
    resolved = [p.replace(annotation=hints[p.name]) for p in parameters]

    def prototype(*args: Any) -> Any:
        return body(*args)

    prototype.__signature__ = inspect.Signature(resolved, return_annotation=_result_type(prepare))  # type: ignore[attr-defined]
    prototype.__name__ = prepare.__name__
    prototype.__module__ = prepare.__module__
    return prototype


def _tracing_off() -> bool:
    """No mode or transform that must see the call (checked before the CPU fast path)."""
    return (
        torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._functorch.peek_interpreter_stack() is None
    )


class DeclaredOp(Generic[R]):
    """A custom op built from one ``prepare``; call it with the op's arguments (positional)."""

    def __init__(self, qualname: str, prepare: Callable[..., Native[R]], native: str) -> None:
        self.qualname = qualname
        self.function = qualname.replace("::", ".")
        self.prepare = prepare
        self.native = native
        self.names = tuple(inspect.signature(prepare).parameters)[1:]
        # The dispatcher sends a call to the CPU kernel only when every tensor is on the CPU: no device check.
        self.custom_op = torch.library.custom_op(qualname, mutates_args=(), device_types="cpu")(
            _schema_prototype(prepare, self._cpu)
        )
        self.custom_op.register_kernel("cuda")(self._cuda)
        self.custom_op.register_fake(self._fake)
        self.overload = self.custom_op._opoverload
        self._has_autograd = False
        EMULATED_KERNELS[qualname] = self.emulated

    # ------------------------------------------------------------ kernels

    def _check_devices(self, args: tuple[Any, ...], device_type: str | None) -> torch.Tensor | None:
        tensors = flatten_tensors(zip(self.names, args, strict=False))
        ArgCheck(self.function).same_devices(tensors, device_type)
        return tensors[0][1] if tensors else None

    def _execute(self, prepared: Native[R], backend: Backend) -> R:
        if prepared.run is not None:
            return prepared.run(backend)
        backend.call(self.native, *prepared.args, workspace=prepared.workspace)
        return prepared.outputs

    def _cpu(self, *args: Any) -> R:
        return self._execute(self.prepare(Target.CPU, *args), Backend(cpu_native(), None))

    def _cuda(self, *args: Any) -> R:
        anchor = self._check_devices(args, "cuda")
        if anchor is None:
            raise TypeError(f"{self.function}: a CUDA kernel was called without any tensor argument")
        with torch.cuda.device(anchor.device):
            prepared = self.prepare(Target.CUDA, *args)
            return self._execute(prepared, Backend(_native.cuda_module(), _native.cuda_stream(anchor)))

    def emulated(self, *args: Any) -> R:
        """The CUDA kernel's source run by the host harness on CPU tensors (``vision_kernels.testing.emulated``)."""
        self._check_devices(args, "cpu")
        return self._execute(self.prepare(Target.EMULATED, *args), Backend(_native.emulation_module(), 0))

    def _fake(self, *args: Any) -> R:
        self._check_devices(args, None)
        return self.prepare(Target.FAKE, *args).outputs

    # ------------------------------------------------------------ calls

    def register_autograd(self, backward: Callable[..., Any], *, setup_context: Callable[..., Any]) -> None:
        self.custom_op.register_autograd(backward, setup_context=setup_context)
        self._has_autograd = True

    def __call__(self, *args: Any) -> R:
        """Run the op: the CPU kernel directly when the dispatcher would pick it anyway, else ``torch.ops``."""
        if torch.compiler.is_compiling():  # dynamo traces the dispatcher call, never the fast path
            return self.overload(*args)  # type: ignore[no-any-return]
        fast = True
        for value in args:
            if isinstance(value, torch.Tensor):
                if type(value) is not torch.Tensor or not value.is_cpu or value.requires_grad:
                    fast = False
                    break
            elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
                fast = False
                break
        if fast and _tracing_off():
            return self._cpu(*args)
        return self.overload(*args)  # type: ignore[no-any-return]


def declare(qualname: str, *, native: str | None = None) -> Callable[[Callable[..., Native[R]]], DeclaredOp[R]]:
    """Decorator: the custom op ``qualname`` from ``prepare`` (see the module docstring).

    ``native`` is the stem of the native entry points (``<native>_cpu``, ``<native>_cuda``), by default
    the op's name.
    """

    def decorate(prepare: Callable[..., Native[R]]) -> DeclaredOp[R]:
        return DeclaredOp(qualname, prepare, native or qualname.split("::")[1])

    return decorate
