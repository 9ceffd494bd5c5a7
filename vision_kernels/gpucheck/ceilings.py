"""The device's ceilings, measured with torch: fp32 and fp16 GEMM TFLOP/s and copy GB/s.

fp32 GEMM is measured with TF32 off (true fp32: what a fp32 kernel can be held to), fp16 with fp32
accumulation (cuBLAS's default), both on 8192^3 products; copy on a 1 GiB tensor (read + write bytes). Each is
the best of a few runs timed with CUDA events after a warm-up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def _best_ms(fn: Callable[[], Any], repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return min(times)


def _gemm_tflops(size: int, dtype: torch.dtype, device: str) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size**3 / (_best_ms(lambda: torch.mm(a, b)) * 1e-3) / 1e12


def measure(device: str = "cuda", size: int = 8192, copy_bytes: int = 2**30) -> dict[str, float]:
    """``{"fp32_gemm_tflops", "fp16_gemm_tflops", "copy_gbs"}`` of ``device``."""
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        result = {
            "fp32_gemm_tflops": _gemm_tflops(size, torch.float32, device),
            "fp16_gemm_tflops": _gemm_tflops(size, torch.float16, device),
        }
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    source = torch.empty(copy_bytes // 4, device=device).fill_(1.0)
    target = torch.empty_like(source)
    result["copy_gbs"] = 2 * copy_bytes / (_best_ms(lambda: target.copy_(source)) * 1e-3) / 1e9
    return result


def fraction(flops: float | None, bytes_moved: float | None, ms: float, dtype: torch.dtype,
             limits: dict[str, float]) -> tuple[float | None, str | None]:  # fmt: skip
    """A kernel's fraction of its ceiling: GEMM of its dtype (fp16/bf16 -> fp16, else fp32) for FLOPs, else copy."""
    if flops:
        name = "fp16_gemm_tflops" if dtype in (torch.float16, torch.bfloat16) else "fp32_gemm_tflops"
        return flops / (ms * 1e-3) / 1e12 / limits[name], name.replace("_tflops", "")
    if bytes_moved:
        return bytes_moved / (ms * 1e-3) / 1e9 / limits["copy_gbs"], "copy"
    return None, None
