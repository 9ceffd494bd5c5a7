"""Sample calls of the attention_decomp family's op for the shared contract tests (test_op_contracts.py)."""

from __future__ import annotations

import torch

from vision_kernels.testing import OpSample

OP = "vision_kernels::attention_decomposition"


def _inputs(b: int, nl: int, n: int, h: int, d: int, e: int, offset: bool = True) -> dict[str, object]:
    return {
        "values": torch.randn(b, nl, n, h * d).unflatten(-1, (h, d)),  # [B, L, N, H, D], view of [B, L, N, W]
        "attn": torch.softmax(torch.randn(b, nl, h, n), -1),  # [B, L, H, N]
        "folded": torch.randn(nl, h, d, e),  # [L, H, D, E]
        "scale": torch.rand(b) + 0.5,  # [B]
        "offset": torch.randn(b, nl, e) if offset else None,  # [B, L, E]
    }


def _per_token() -> dict[str, object]:
    return {**_inputs(2, 2, 5, 2, 3, 6), "layers": [1, 0], "keep_layers": True, "keep_heads": True,
            "keep_tokens": True, "out_dtype": None, "check_finite": True}  # fmt: skip


def _summed_fp16() -> dict[str, object]:
    return {**_inputs(2, 2, 5, 2, 3, 6, offset=False), "layers": [1], "keep_layers": False, "keep_heads": False,
            "keep_tokens": False, "out_dtype": torch.float16, "check_finite": False}  # fmt: skip


def _large() -> dict[str, object]:
    return {**_inputs(8, 3, 50, 4, 16, 64), "layers": [0, 1, 2], "keep_layers": True, "keep_heads": True,
            "keep_tokens": True, "out_dtype": None, "check_finite": True}  # fmt: skip


SAMPLES = [
    OpSample(OP, _per_token, "per-token", grad=True),
    OpSample(OP, _summed_fp16, "summed-fp16", grad=True, contracts=("opcheck", "emulated"), rtol=2e-3, atol=1e-3),
    OpSample(OP, _large, "large", contracts=("threads", "python_threads")),
]
