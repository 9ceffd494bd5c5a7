"""Sample calls of the cc_conv family's ops for the shared contract tests (test_op_contracts.py)."""

from __future__ import annotations

import torch

from vision_kernels.ops import cc_conv2d_grid
from vision_kernels.testing import OpSample

SMALL = ("opcheck", "emulated", "bad_device", "bad_dtype", "bad_shape")
LARGE = ("threads", "python_threads")


def _forward(batch: int, channels: int, out_channels: int, scale: tuple, support: tuple, padding: str = "zeros",
             bias: bool = True) -> dict[str, object]:  # fmt: skip
    grid = cc_conv2d_grid((9, 11), support, scale=scale)
    return {
        "input": torch.randn(batch, channels, 9, 11),  # [B, C, H, W]
        "weight": torch.randn(*grid.phases, out_channels, channels, *support)
        / (channels * 3),  # [Py, Px, O, C, Ky, Kx]
        "bias": torch.randn(out_channels) if bias else None,  # [O]
        "out_size": list(grid.out_size),
        "scale": list(grid.scale),
        "padding_mode": padding,
        "check_finite": bias,
    }


def _grad_input(batch: int = 2, channels: int = 3, out_channels: int = 5) -> dict[str, object]:
    forward = _forward(batch, channels, out_channels, (1.5, 1.5), (3, 3))
    return {"grad": torch.randn(batch, out_channels, *forward["out_size"]), "weight": forward["weight"],
            "in_size": [9, 11], "scale": forward["scale"], "padding_mode": "zeros"}  # fmt: skip


def _grad_weight(batch: int = 2, channels: int = 3, out_channels: int = 5) -> dict[str, object]:
    forward = _forward(batch, channels, out_channels, (1.5, 1.5), (3, 3))
    return {"grad": torch.randn(batch, out_channels, *forward["out_size"]), "input": forward["input"],
            "support": [3, 3], "scale": forward["scale"], "padding_mode": "zeros"}  # fmt: skip


SAMPLES = [
    OpSample("vision_kernels::cc_conv2d", lambda: _forward(2, 3, 5, (1.5, 1.5), (3, 3)), "up1.5", SMALL, grad=True),
    OpSample(
        "vision_kernels::cc_conv2d",
        lambda: _forward(2, 3, 5, (1.5, 1.5), (3, 3), "replicate", bias=False),
        "replicate-no-bias",
        SMALL,
    ),  # fmt: skip
    OpSample("vision_kernels::cc_conv2d", lambda: _forward(3, 8, 9, (1.5, 1.5), (3, 3)), "up1.5-3x8x9", LARGE),
    OpSample("vision_kernels::cc_conv2d", lambda: _forward(4, 16, 16, (0.7, 0.6), (3, 2)), "down0.7x0.6", LARGE),
    OpSample("vision_kernels::cc_conv2d_grad_input", _grad_input, "up1.5", SMALL),
    OpSample("vision_kernels::cc_conv2d_grad_input", lambda: _grad_input(3, 8, 9), "3x8x9", LARGE),
    OpSample("vision_kernels::cc_conv2d_grad_weight", _grad_weight, "up1.5", SMALL),
    OpSample("vision_kernels::cc_conv2d_grad_weight", lambda: _grad_weight(3, 8, 9), "3x8x9", LARGE),
]
