"""Full-size benchmark cases of the CUDA kernels on the device (one or more per kernel).

Each case builds its inputs on the device and returns :class:`~vision_kernels.bench.harness.Contenders` (ours,
the plain-PyTorch reference, anchors such as faiss-gpu or cuBLAS through torch), the FLOPs or bytes of one call
and the dtype whose ceiling applies. Sizes are the CPU benchmarks' full sizes or larger, chosen so that every
case fits in 16 GB and runs in seconds on a modern GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..bench.harness import Contenders


@dataclass
class GpuCase:
    kernel: str  # the op's name, as the parity tests report it (vision_kernels::<kernel>)
    name: str
    setup: Callable[[str], Contenders]
    dtype: torch.dtype = torch.float32


CASES: list[GpuCase] = []


def gpu_case(kernel: str, name: str, dtype: torch.dtype = torch.float32) -> Callable[..., Any]:
    def register(setup: Callable[[str], Contenders]) -> Callable[[str], Contenders]:
        CASES.append(GpuCase(kernel, name, setup, dtype))
        return setup

    return register


def _faiss_gpu() -> Any:
    """faiss with GPU support (and its torch bridge), or None."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (faiss functions accept torch tensors)
    except ImportError:
        return None
    return faiss if getattr(faiss, "get_num_gpus", lambda: 0)() > 0 else None


def _randn(*shape: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype)


@gpu_case("sq_l2_distance", "sq_l2_distance 16384 x 16384 x 128 fp32")
def distance(device: str) -> Contenders:
    from ..ops import sq_l2_distance
    from ..reference.distance import sq_l2_distance as reference

    n, m, d = 16384, 16384, 128
    x, y = _randn(n, d, device=device), _randn(m, d, device=device)
    anchors: dict[str, Callable[[], Any]] = {"torch.cdist^2": lambda: torch.cdist(x, y).square_()}
    faiss = _faiss_gpu()
    if faiss is not None:
        resources = faiss.StandardGpuResources()
        anchors["faiss-gpu pairwise_distance_gpu"] = lambda: faiss.pairwise_distance_gpu(resources, x, y)
    return Contenders(ours=lambda: sq_l2_distance(x, y), reference=lambda: reference(x, y), anchors=anchors,
                      flops=2.0 * n * m * d, device="cuda")  # fmt: skip


@gpu_case("attention_decomposition", "attention_decomposition ViT-B-32 shapes, batch 64, per token")
def attention(device: str) -> Contenders:
    from ..ops import attention_decomposition
    from ..reference.attention_decomp import attention_decomposition as reference

    b, nl, n, h, d, e = 64, 12, 50, 12, 64, 512
    values = _randn(b, nl, n, h, d, device=device)  # [B, L, N, H, Dh]
    attn = torch.softmax(_randn(b, nl, h, n, device=device), -1)  # [B, L, H, N]
    folded = _randn(nl, h, d, e, device=device) / d  # [L, H, Dh, E]
    scale = torch.rand(b, device=device) + 0.5
    return Contenders(
        ours=lambda: attention_decomposition(values, attn, folded, scale, check_finite=False),
        reference=lambda: reference(values, attn, folded, scale),
        bytes_moved=4.0 * (values.numel() + b * nl * h * n * e),  # reads the values, writes [B, L, H, N, E]
        device="cuda",
    )


@gpu_case("second_order_effects", "second_order_effects ViT-B-32 layer 9, batch 32 x 3072 neurons")
def second_order(device: str) -> Contenders:
    from ..ops import second_order_effects
    from ..reference.second_order import second_order_effects as reference

    b, nl, h, n, nn, e = 32, 12, 12, 50, 3072, 512
    layers = [10, 11]
    attn = torch.softmax(_randn(b, nl, h, n, device=device), -1)  # [B, L, H, N]
    ln_std = torch.rand(b, nl, n, device=device) + 0.5  # [B, L, N]
    act = _randn(b, n, nn, device=device)  # [B, N, Nn]
    directions = (_randn(nn, 2, h, e, device=device) / 64).permute(1, 2, 0, 3)  # [S, H, Nn, E]
    scale = torch.rand(b, device=device) + 0.5
    return Contenders(
        ours=lambda: second_order_effects(attn, ln_std, act, directions, scale, None, layers, check_finite=False),
        reference=lambda: reference(attn, ln_std, act, directions, scale, None, layers),
        flops=2.0 * b * len(layers) * h * nn * (e + n),
        device="cuda",
    )


def _pca_space(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    rows, dims, components = 5000, 99_648, 1000
    mean = _randn(dims, device=device) * 1e-2
    std = torch.rand(dims, device=device) * 2e-2 + 5e-3
    basis = torch.linalg.qr(_randn(dims, components, device=device)).Q.contiguous()  # [D, K]
    return mean, std, basis, rows


@gpu_case("pca_project", "pca_project 5000 x 99648 -> 1000 fp32")
def project(device: str) -> Contenders:
    from ..ops import pca_project
    from ..reference import pca_project as reference

    mean, std, basis, rows = _pca_space(device)
    w = _randn(rows, basis.shape[0], device=device) * std + mean  # [N, D]
    return Contenders(
        ours=lambda: pca_project(w, mean, std, basis, check_finite=False),
        reference=lambda: reference.pca_project(w, mean, std, basis),
        anchors={"GEMM alone w @ basis (floor)": lambda: w @ basis},
        flops=2.0 * rows * basis.shape[0] * basis.shape[1],
        device="cuda",
    )


@gpu_case("pca_reconstruct", "pca_reconstruct 5000 x 1000 -> 99648 fp32")
def reconstruct(device: str) -> Contenders:
    from ..ops import pca_reconstruct
    from ..reference import pca_project as reference

    mean, std, basis, rows = _pca_space(device)
    coefficients = _randn(rows, basis.shape[1], device=device)  # [N, K]
    return Contenders(
        ours=lambda: pca_reconstruct(coefficients, mean, std, basis, check_finite=False),
        reference=lambda: reference.pca_reconstruct(coefficients, mean, std, basis),
        anchors={"GEMM alone c @ basis^T (floor)": lambda: coefficients @ basis.T},
        flops=2.0 * rows * basis.shape[0] * basis.shape[1],
        device="cuda",
    )


@gpu_case("cc_conv2d", "cc_conv2d forward B=16 C=128 128x128 scale 1.5 K=3 vs F.conv2d at the output size")
def continuous_convolution(device: str) -> Contenders:
    from ..ops import cc_conv2d, cc_conv2d_grid
    from ..reference.cc_conv import cc_conv2d as reference

    batch, channels, size, scale = 16, 128, 128, 1.5
    grid = cc_conv2d_grid((size, size), 3, scale=scale)
    x = _randn(batch, channels, size, size, device=device)  # [B, C, H, W]
    w = _randn(*grid.phases, channels, channels, 3, 3, device=device) * 0.05
    b = _randn(channels, device=device)
    out_h, out_w = grid.out_size
    same_size = _randn(batch, channels, out_h, out_w, device=device)
    plain = w.flatten(0, len(grid.phases) - 1)[0]  # one phase's taps [O, C, 3, 3]
    return Contenders(
        ours=lambda: cc_conv2d(x, w, b, scale=scale),
        reference=lambda: reference(x, w, b, size=(out_h, out_w), scale=(scale, scale)),
        anchors={
            "F.conv2d at the output size (cuDNN)": lambda: torch.nn.functional.conv2d(same_size, plain, b, padding=1)
        },  # fmt: skip
        flops=2.0 * batch * channels * channels * 9 * out_h * out_w,
        device="cuda",
    )


@gpu_case("patch_nn", "patch_nn 256x256 RGB vs itself, 7x7 patches")
def patch_search(device: str) -> Contenders:
    from ..ops import patch_nn
    from ..reference import patch_nn as reference

    image = torch.rand(256, 256, 3, device=device)  # [H, W, C]
    count = (256 - 6) ** 2
    anchors: dict[str, Callable[[], Any]] = {}
    faiss = _faiss_gpu()
    if faiss is not None:
        vectors = image.permute(2, 0, 1)[None].unfold(2, 7, 1).unfold(3, 7, 1)  # [1, C, H', W', 7, 7]
        vectors = vectors.permute(0, 2, 3, 1, 4, 5).reshape(count, -1).contiguous()  # [N, 147]
        index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), vectors.shape[1])
        index.add(vectors)
        anchors["faiss-gpu GpuIndexFlatL2 k=1"] = lambda: index.search(vectors, 1)
    return Contenders(
        ours=lambda: patch_nn(image, image, 7),
        reference=lambda: reference.patch_nn_chunked(image[None], image[None], 7),
        anchors=anchors,
        flops=2.0 * count * count * 147,
        device="cuda",
    )
