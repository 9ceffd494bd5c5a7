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
* :func:`run_ranks` runs a command as N gloo ranks on this machine (the environment torchrun sets),
  for tests of distributed code without torchrun.
* :class:`OpSample` and the ``check_*`` functions are the contract every op meets (thread-count
  consistency, ``torch.library.opcheck``, bad-device/dtype/shape errors naming the argument,
  emulated CUDA kernel = CPU kernel); each family lists its samples in
  ``python_tests/<family>/samples.py`` and ``python_tests/test_op_contracts.py`` runs every check on each.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    "run_ranks",
    "OpSample",
    "CONTRACTS",
    "CHECKS",
    "check_opcheck",
    "check_thread_count",
    "check_python_threads",
    "check_emulated",
    "check_bad_device",
    "check_bad_dtype",
    "check_bad_shape",
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(
    command: Sequence[Any],
    world: int = 2,
    *,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
    timeout: float = 600,
) -> list[subprocess.CompletedProcess]:
    """Run ``command`` as ``world`` processes, ranks 0..world-1 of one gloo group on this machine.

    Each gets the variables torchrun would set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT`` on a free port), ``VK_PROGRESS=0`` and ``OMP_NUM_THREADS=1``
    (``env`` adds or overrides variables). Returns one ``CompletedProcess`` per rank, in rank order,
    with ``stdout``/``stderr`` as text when ``capture``; the caller asserts on the return codes. A rank
    still running after ``timeout`` seconds is killed (with every other) and ``TimeoutExpired`` raised.
    """
    port = str(_free_port())
    argv = [str(word) for word in command]
    pipe = subprocess.PIPE if capture else None
    processes = []
    try:
        for rank in range(world):
            variables = dict(os.environ, VK_PROGRESS="0", OMP_NUM_THREADS="1")
            variables.update(env or {})
            variables.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                             MASTER_PORT=port)  # fmt: skip
            processes.append(subprocess.Popen(argv, env=variables, stdout=pipe, stderr=pipe, text=True))
        results = []
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(argv, process.returncode, out, err))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


# ---------------------------------------------------------------- the contract every op meets

CONTRACTS = ("opcheck", "threads", "python_threads", "emulated", "bad_device", "bad_dtype", "bad_shape")


@dataclass(frozen=True)
class OpSample:
    """One call of a ``vision_kernels::`` op for the shared contract tests.

    ``arguments()`` returns fresh CPU arguments by name (the op's schema names; every argument
    without a default); ``contracts`` the checks that apply (default: all of :data:`CONTRACTS`);
    ``fixed`` the tensor arguments the bad-input checks leave alone (e.g. an index whose dtype
    or shape the op does not check because another argument fixes it); ``rtol``/``atol`` the
    emulated-vs-CPU tolerance (default :func:`tolerances` of the least precise floating argument);
    ``grad``: the op has a gradient, so ``opcheck`` runs again with the floating arguments requiring grad.
    """

    op: str
    arguments: Callable[[], dict[str, Any]]
    name: str = ""
    contracts: tuple[str, ...] = CONTRACTS
    fixed: tuple[str, ...] = ()
    rtol: float | None = None
    atol: float | None = None
    grad: bool = False

    @property
    def id(self) -> str:
        return f"{self.op.split('::')[-1]}-{self.name}" if self.name else self.op.split("::")[-1]

    def overload(self) -> Any:
        import vision_kernels.ops  # noqa: F401  (registers every op)

        namespace, name = self.op.split("::")
        return getattr(getattr(torch.ops, namespace), name).default

    def ordered(self, arguments: Mapping[str, Any]) -> list[Any]:
        """The arguments in schema order (defaults filled in), as the native and emulated kernels take them."""
        values = []
        for argument in self.overload()._schema.arguments:
            if argument.name in arguments:
                values.append(arguments[argument.name])
            elif argument.has_default_value():
                values.append(argument.default_value)
            else:
                raise TypeError(f"OpSample {self.id}: no value for argument {argument.name!r}")
        return values

    def call(self, arguments: Mapping[str, Any] | None = None) -> Any:
        return self.overload()(*self.ordered(self.arguments() if arguments is None else arguments))


def _outputs(result: Any) -> list[torch.Tensor]:
    return [result] if isinstance(result, torch.Tensor) else [t for t in result if isinstance(t, torch.Tensor)]


def _assert_identical(got: Any, want: Any, what: str) -> None:
    for a, b in zip(_outputs(got), _outputs(want), strict=True):
        if not torch.equal(a, b):
            raise AssertionError(f"{what}: results differ (max |diff| {max_abs_error(a, b):.3e})")


def check_opcheck(sample: OpSample) -> None:
    """``torch.library.opcheck`` (schema, fake kernel, autograd registration, AOT dispatch) on the sample,
    and again with every floating tensor argument requiring grad when the op has a gradient."""
    arguments = sample.arguments()
    torch.library.opcheck(sample.overload(), tuple(sample.ordered(arguments)))
    if not sample.grad:
        return
    grad = {k: v.detach().requires_grad_() if _is_float(v) else v for k, v in arguments.items()}
    torch.library.opcheck(sample.overload(), tuple(sample.ordered(grad)))


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def check_thread_count(sample: OpSample, counts: Sequence[int] = (1, 2, 3)) -> None:
    """The CPU kernel gives bit-identical results whatever torch's thread count."""
    arguments = sample.arguments()
    previous = torch.get_num_threads()
    results = []
    try:
        for count in counts:
            torch.set_num_threads(count)
            results.append(sample.call(arguments))
    finally:
        torch.set_num_threads(previous)
    for count, result in zip(counts[1:], results[1:], strict=True):
        _assert_identical(result, results[0], f"{sample.id}: {count} threads vs {counts[0]}")


def check_python_threads(sample: OpSample, workers: int = 4, calls: int = 3) -> None:
    """Concurrent calls from Python threads (the GIL is released in the kernel) give the serial result."""
    import threading

    arguments = sample.arguments()
    expected = sample.call(arguments)
    results: list[Any] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(calls):
            out = sample.call(arguments)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == workers * calls, f"{sample.id}: {len(results)} of {workers * calls} calls returned"
    for result in results:
        _assert_identical(result, expected, f"{sample.id}: concurrent call")


def check_emulated(sample: OpSample) -> None:
    """The CUDA kernel, run by the host emulation harness on CPU tensors, equals the CPU kernel."""
    arguments = sample.arguments()
    want = sample.call(arguments)
    got = emulated(sample.op)(*sample.ordered(arguments))
    inputs = [v.dtype for v in arguments.values() if _is_float(v)]
    dtype = min(inputs, key=lambda d: torch.finfo(d).bits) if inputs else torch.float32  # the computation's precision
    tol = tolerances(dtype)
    for a, b in zip(_outputs(got), _outputs(want), strict=True):
        rtol = tol["rtol"] if sample.rtol is None else sample.rtol
        atol = tol["atol"] if sample.atol is None else sample.atol
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{sample.id}: emulated vs cpu: {m}")


def _changed(sample: OpSample, change: Callable[[torch.Tensor], torch.Tensor]) -> list[tuple[str, dict[str, Any]]]:
    arguments = sample.arguments()
    return [
        (name, {**arguments, name: change(value)})
        for name, value in arguments.items()
        if isinstance(value, torch.Tensor) and name not in sample.fixed
    ]


def _assert_names(sample: OpSample, error: type[Exception], name: str, arguments: dict[str, Any], what: str) -> None:
    try:
        sample.call(arguments)
    except error as raised:
        if f"'{name}'" not in str(raised):
            raise AssertionError(f"{sample.id}: {what} of {name!r}: the error does not name it: {raised}") from raised
    else:
        raise AssertionError(f"{sample.id}: {what} of {name!r} was accepted (expected {error.__name__})")


def check_bad_device(sample: OpSample) -> None:
    """Every tensor argument in turn on the meta device: ValueError naming it."""
    for name, arguments in _changed(sample, lambda t: t.to("meta")):
        _assert_names(sample, ValueError, name, arguments, "a meta tensor")


def check_bad_dtype(sample: OpSample) -> None:
    """Every tensor argument in turn as complex64 (no op takes it): TypeError naming it."""
    for name, arguments in _changed(sample, lambda t: t.to(torch.complex64)):
        _assert_names(sample, TypeError, name, arguments, "dtype complex64")


def check_bad_shape(sample: OpSample) -> None:
    """Every tensor argument in turn with one more leading dimension: ValueError naming it."""
    for name, arguments in _changed(sample, lambda t: t[None]):
        _assert_names(sample, ValueError, name, arguments, "an extra dimension")


CHECKS: dict[str, Callable[[OpSample], None]] = {
    "opcheck": check_opcheck,
    "threads": check_thread_count,
    "python_threads": check_python_threads,
    "emulated": check_emulated,
    "bad_device": check_bad_device,
    "bad_dtype": check_bad_dtype,
    "bad_shape": check_bad_shape,
}
