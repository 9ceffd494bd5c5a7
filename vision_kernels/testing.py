"""Helpers for parity tests of vision_kernels ops (used by python_tests/, usable by anyone).

* :func:`emulated` runs an op's *CUDA kernel* on CPU tensors through the host emulation harness
  (``vision_kernels._C_emu``): the kernel's own source, block by block, one host thread per
  CUDA thread. This is how CUDA kernels are executed in CI on machines without a GPU.
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
from typing import Any

import torch

from . import _native

__all__ = [
    "emulated",
    "emulation_available",
    "tolerances",
    "assert_low_precision_parity",
    "max_abs_error",
    "each_tensor_moved",
    "DLPackProducer",
    "run_ranks",
]


def emulation_available() -> bool:
    """Whether the CUDA kernels were built for the host emulation harness."""
    return _native.emulation_available()


def emulated(op: Any) -> Callable[..., Any]:
    """The emulated CUDA kernel of ``op`` (an op name like ``"vision_kernels::sq_l2_distance"``
    or its ``torch.ops`` handle), taking the op's arguments as CPU tensors."""
    import vision_kernels.ops  # noqa: F401  (imports every op module, registering its kernels)

    from .ops import _registry

    name = _registry.qualified_name(op)
    try:
        return _registry.EMULATED_KERNELS[name]
    except KeyError:
        known = ", ".join(sorted(_registry.EMULATED_KERNELS))
        raise KeyError(
            f"vision_kernels.testing.emulated: no CUDA kernel registered for {name!r}; known: {known}"
        ) from None


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
