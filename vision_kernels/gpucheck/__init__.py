"""``vision-kernels gpu-check`` / ``make gpu-check``: the CUDA kernels checked on a real device in one command.

On a machine with a CUDA device it (1) builds the package for that device (``pip install ".[test]"`` from the
source checkout with ``VK_CUDA=ON`` and ``CUDAARCHS`` set to the device's architecture, in
``build/gpu-check-sm<arch>`` so that reruns are incremental), (2) runs every CUDA kernel's parity tests on the
device (the tests marked ``emulation``, with ``VK_KERNEL_DEVICE=cuda``: :func:`vision_kernels.testing.emulated`
then moves the CPU inputs to the device, calls the op's CUDA kernel and brings the results back), (3) times each
kernel at full size on the device against its plain-PyTorch reference and anchors (faiss-gpu where relevant),
with the device's ceilings measured by torch (fp32 and fp16 GEMM TFLOP/s, copy GB/s), and (4) prints one screen
(pass/fail per kernel, fraction of its ceiling) and writes the JSON report atomically.

Exit codes: 0 every kernel passed; 1 a kernel failed (or the build, or a step ran out of time); 2 usage error;
:data:`NO_DEVICE` (77, the "skipped" code of automake and meson) when there is no usable CUDA device, with one
line saying why. Steps are bounded by time (:mod:`.run`): 10 minutes in total on one modern GPU by default.
"""

from __future__ import annotations

NO_DEVICE = 77
"""Exit code of ``gpu-check`` without a usable CUDA device (distinct from a failure, 1)."""

__all__ = ["NO_DEVICE"]
