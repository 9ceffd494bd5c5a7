"""Sample calls of the pca_project family's ops for the shared contract tests (test_op_contracts.py)."""

from __future__ import annotations

import torch

from vision_kernels.testing import OpSample

PROJECT, RECONSTRUCT = "vision_kernels::pca_project", "vision_kernels::pca_reconstruct"
SMALL = ("opcheck", "emulated", "bad_device", "bad_dtype", "bad_shape")
LARGE = ("threads", "python_threads")


def _space(dims: int, components: int) -> dict[str, torch.Tensor]:
    return {
        "mean": torch.randn(dims) * 0.5,  # [D]
        "std": torch.rand(dims) + 0.25,  # [D]
        "basis": torch.randn(dims, components) / dims**0.5,  # [D, K]
    }


def _project(rows: int, dims: int, components: int, mean: bool = True, check: bool = True) -> dict[str, object]:
    space = _space(dims, components)
    return {"w": torch.randn(rows, dims), **space, "mean": space["mean"] if mean else None, "check_finite": check}


def _reconstruct(rows: int, dims: int, components: int, out_dtype=None, check: bool = True) -> dict[str, object]:
    return {"coeffs": torch.randn(rows, components), **_space(dims, components), "out_dtype": out_dtype,
            "check_finite": check}  # fmt: skip


SAMPLES = [
    OpSample(PROJECT, lambda: _project(4, 9, 3), "4x9x3", SMALL, grad=True),
    OpSample(PROJECT, lambda: _project(20, 9, 3, mean=False, check=False), "20x9x3-no-mean", SMALL, grad=True),
    OpSample(PROJECT, lambda: _project(4, 5000, 40), "4x5000x40", LARGE),
    OpSample(RECONSTRUCT, lambda: _reconstruct(4, 9, 3), "4x9x3", SMALL, grad=True),
    OpSample(RECONSTRUCT, lambda: _reconstruct(20, 9, 3, torch.float64, False), "20x9x3-f64", SMALL, grad=True),
    OpSample(RECONSTRUCT, lambda: _reconstruct(4, 5000, 40), "4x5000x40", LARGE),
    OpSample(RECONSTRUCT, lambda: _reconstruct(2, 3000, 50, check=False), "2x3000x50", ("python_threads",)),
]
