"""Sample calls of the second_order family's op for the shared contract tests (test_op_contracts.py)."""

from __future__ import annotations

import torch

from vision_kernels.testing import OpSample

OP = "vision_kernels::second_order_effects"


def _inputs(b: int, nl: int, h: int, n: int, nn: int, e: int, s: int | None = None) -> dict[str, object]:
    return {
        "attn": torch.softmax(torch.randn(b, nl, h, n), -1),  # [B, L, H, N]
        "ln_std": torch.rand(b, nl, n) + 0.5,  # [B, L, N]
        "activations": torch.randn(b, n, nn),  # [B, N, Nn]
        "directions": torch.randn(nl if s is None else s, h, nn, e),  # [S, H, Nn, E]
        "scale": torch.rand(b) + 0.5,  # [B]
        "offset": torch.randn(b, e),  # [B, E]
    }


def _two_layers() -> dict[str, object]:
    return {**_inputs(2, 3, 2, 5, 4, 6, s=2), "layers": [1, 2], "out_dtype": None, "check_finite": True}


def _repeated_fp16() -> dict[str, object]:
    return {**_inputs(2, 3, 2, 5, 4, 6, s=2), "offset": None, "layers": [0, 0], "out_dtype": torch.float16,
            "check_finite": False}  # fmt: skip


def _large() -> dict[str, object]:
    return {**_inputs(8, 3, 4, 50, 64, 64), "layers": [0, 1, 2], "out_dtype": None, "check_finite": True}


SAMPLES = [
    OpSample(OP, _two_layers, "two-layers", grad=True),
    OpSample(OP, _repeated_fp16, "repeated-fp16", grad=True, contracts=("opcheck", "emulated"), rtol=2e-3, atol=1e-3),
    OpSample(OP, _large, "large", contracts=("threads", "python_threads")),
]
