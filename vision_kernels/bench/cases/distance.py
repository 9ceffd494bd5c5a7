"""Benchmark cases of sq_l2_distance: ours vs the broadcast reference, torch.cdist and faiss-cpu."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vision_kernels.bench.harness import Contenders, case
from vision_kernels.ops import sq_l2_distance
from vision_kernels.reference.distance import sq_l2_distance as reference


def _contenders(n: int, m: int, d: int, dtype: torch.dtype = torch.float32) -> Contenders:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator).to(dtype)  # [N, D]
    y = torch.randn(m, d, generator=generator).to(dtype)  # [M, D]
    anchors: dict[str, Callable[[], object]] = {"torch.cdist^2": lambda: torch.cdist(x.float(), y.float()).square_()}
    try:
        import faiss

        xn, yn = x.float().numpy(), y.float().numpy()
        anchors["faiss-cpu pairwise_distances"] = lambda: faiss.pairwise_distances(xn, yn)
    except ImportError:
        pass
    return Contenders(
        ours=lambda: sq_l2_distance(x, y),
        reference=lambda: reference(x, y),
        anchors=anchors,
        flops=3.0 * n * m * d,  # subtract, multiply, add per element pair
    )


@case("distance", "sq_l2_distance 2048x2048x128 fp32 (quick: 512x512x128)")
def square_fp32(quick: bool) -> Contenders:
    return _contenders(512, 512, 128) if quick else _contenders(2048, 2048, 128)


@case("distance", "sq_l2_distance 1024x16384x147 fp32, 7x7x3 patches (quick: 256x4096)")
def patches_fp32(quick: bool) -> Contenders:
    return _contenders(256, 4096, 147) if quick else _contenders(1024, 16384, 147)


@case("distance", "sq_l2_distance 2048x2048x128 bf16 (quick: 512x512x128)", quick=False)
def square_bf16(quick: bool) -> Contenders:
    return _contenders(2048, 2048, 128, torch.bfloat16)
