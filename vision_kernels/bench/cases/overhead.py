"""Fixed cost per call of every op on tiny inputs (issue 18 item 7), against torch.cdist and a matmul.

Research code calls the ops per layer, per level and per step, so the Python and dispatch work around
a kernel matters as much as the kernel. Each contender makes ``CALLS`` calls, so the time column in
milliseconds reads as microseconds per call. The anchors (``torch.cdist`` of 4 x 8 by 4 x 8, a 4 x 8 @
8 x 4 matmul) are measured in the same run. Rows use the public functions with their defaults
(``check_finite=True``) and, where the op has it, a second row with ``check_finite=False`` (what a
caller that already knows its inputs are clean passes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vision_kernels.bench.harness import Contenders, case
from vision_kernels.ops import (
    attention_decomposition,
    cc_conv2d,
    patch_match,
    patch_nn,
    patch_vote,
    pca_project,
    pca_reconstruct,
    second_order_effects,
    sq_l2_distance,
)

CALLS = 1000  # calls per timed run: milliseconds per run = microseconds per call


def _repeat(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        for _ in range(CALLS):
            fn()
        return None

    return run


def _tensor(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _anchors() -> dict[str, Callable[[], object]]:
    x, y = _tensor(4, 8, seed=1), _tensor(4, 8, seed=2)
    return {"torch.cdist 4x8": _repeat(lambda: torch.cdist(x, y)), "matmul 4x8x4": _repeat(lambda: x @ y.T)}


def _calls() -> dict[str, Callable[[bool], Callable[[], object]]]:
    """Per op: ``check_finite -> call`` on tiny inputs."""
    x, y = _tensor(4, 8, seed=1), _tensor(4, 8, seed=2)
    w, mean, std, basis = _tensor(2, 16), _tensor(16), _tensor(16).abs() + 0.5, _tensor(16, 4)
    coeffs = _tensor(2, 4)
    image, weight = _tensor(1, 2, 6, 6), _tensor(1, 1, 3, 2, 3, 3)
    values, attn = _tensor(1, 2, 5, 2, 4), _tensor(1, 2, 2, 5).softmax(-1)
    folded, scale = _tensor(2, 2, 4, 8), _tensor(1).abs() + 0.5
    ln_std, activations, directions = _tensor(1, 2, 5).abs() + 0.5, _tensor(1, 5, 6), _tensor(2, 2, 6, 8)
    queries, keys = _tensor(6, 6, 3), _tensor(6, 6, 3, seed=3)
    return {
        "sq_l2_distance 4x8 by 4x8": lambda f: lambda: sq_l2_distance(x, y, check_finite=f),
        "pca_project 2x16 -> 4": lambda f: lambda: pca_project(w, mean, std, basis, check_finite=f),
        "pca_reconstruct 4 -> 2x16": lambda f: lambda: pca_reconstruct(coeffs, mean, std, basis, check_finite=f),
        "cc_conv2d 1x2x6x6, 3x3, scale 1": lambda f: lambda: cc_conv2d(image, weight, check_finite=f),
        "attention_decomposition B1 L2 N5 H2": lambda f: (
            lambda: attention_decomposition(values, attn, folded, scale, check_finite=f)
        ),
        "second_order_effects B1 L2 N5 Nn6": lambda f: (
            lambda: second_order_effects(attn, ln_std, activations, directions, scale, check_finite=f)
        ),
        "patch_nn 6x6x3, 3x3 patches": lambda f: lambda: patch_nn(queries, keys, 3, check_finite=f),
        "patch_match 6x6x3, 3x3 patches, 1 iteration": lambda f: (
            lambda: patch_match(queries, keys, 3, iterations=1, check_finite=f)
        ),
    }


def _register(op: str, check_finite: bool) -> None:
    label = "" if check_finite else ", check_finite=False"

    @case("overhead", f"{op}{label} (ms per {CALLS} calls = us per call)")
    def setup(quick: bool) -> Contenders:
        call = _calls()[op](check_finite)
        return Contenders(ours=_repeat(call), anchors=_anchors())


for _op in _calls():
    _register(_op, True)
    _register(_op, False)


@case("overhead", f"patch_vote 6x6x3 mean, 3x3 patches (ms per {CALLS} calls = us per call)")
def patch_vote_overhead(quick: bool) -> Contenders:
    values, index = _tensor(6, 6, 3), torch.zeros(4, 4, dtype=torch.long)
    return Contenders(ours=_repeat(lambda: patch_vote(values, index, 3)), anchors=_anchors())
