"""Sample calls of the distance family's op for the shared contract tests (python_tests/test_op_contracts.py)."""

from __future__ import annotations

import torch

from vision_kernels.testing import OpSample


def _strided() -> dict[str, object]:
    x, y = torch.randn(300, 40), torch.randn(500, 40)
    return {"x": x.t().contiguous().t(), "y": y, "check_finite": False}  # x column-major


SAMPLES = [
    OpSample(
        "vision_kernels::sq_l2_distance",
        lambda: {"x": torch.randn(300, 40), "y": torch.randn(500, 40), "check_finite": True},
        "300x500x40",
        grad=True,
    ),  # fmt: skip
    OpSample("vision_kernels::sq_l2_distance", _strided, "column-major", grad=True),
]
