"""patch_match: bit-for-bit equality with the PyTorch reference of the same algorithm (CPU and
emulated CUDA kernels, plain and normalized, masks, warm starts), determinism, recall against the
exact search on natural images, and bad input."""

from __future__ import annotations

import pytest
import torch

from vision_kernels.ops import PatchNNResult, patch_match, patch_nn
from vision_kernels.ops.patch_nn import normalize_patch_size
from vision_kernels.reference import patch_nn as reference
from vision_kernels.testing import emulated

OP = torch.ops.vision_kernels.patch_match


def _arguments(q, k, patch, kwargs):
    """The op's arguments in schema order (defaults: 4 iterations, seed 0, finite values checked)."""
    masks = (kwargs.get("query_mask"), kwargs.get("key_mask"), kwargs.get("key_den"))
    return (q, k, *masks, *normalize_patch_size(patch), kwargs.get("iterations", 4), kwargs.get("seed", 0),
            kwargs.get("init"), True)  # fmt: skip


def cpu_kernel(q, k, patch, **kwargs):
    return OP(*_arguments(q, k, patch, kwargs))


def cuda_emulated(q, k, patch, **kwargs):
    return emulated(OP)(*_arguments(q, k, patch, kwargs))


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def assert_same_as_reference(kernel, q, k, patch, **kwargs) -> None:
    index, ssd = kernel(q, k, patch, **kwargs)
    want_index, want_ssd = reference.patch_match(q, k, patch, **kwargs)
    assert torch.equal(index, want_index), f"{int((index != want_index).sum())} indices differ"
    assert torch.equal(ssd, want_ssd)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("normalized", [False, True])
def test_equals_reference(kernel, normalized) -> None:
    g = torch.Generator().manual_seed(1)
    q, k = torch.rand((2, 9, 11, 3), generator=g), torch.rand((3, 10, 8, 3), generator=g)
    den = 0.3 + torch.rand((2, 8, 6), generator=g, dtype=torch.float64) if normalized else None
    assert_same_as_reference(kernel, q, k, (2, 3, 3), iterations=4, seed=7, key_den=den)


@pytest.mark.parametrize("kernel", KERNELS)
def test_masks_and_warm_start(kernel) -> None:
    g = torch.Generator().manual_seed(2)
    q, k = torch.rand((1, 12, 10, 2), generator=g), torch.rand((1, 11, 13, 2), generator=g)
    qm = torch.rand((1, 10, 8), generator=g) > 0.3
    km = torch.rand((1, 9, 11), generator=g) > 0.9  # sparse: the scan fallback finds valid keys
    init = torch.randint(-1, 99, (1, 10, 8), generator=g)  # -1: no guess (out-of-range guesses are refused)
    assert_same_as_reference(kernel, q, k, 3, iterations=3, seed=3, query_mask=qm, key_mask=km, init=init)
    index, _ = kernel(q, k, 3, iterations=0, query_mask=qm, key_mask=km)
    assert bool((index[qm] >= 0).all()) and bool(km.reshape(-1)[index[qm]].all()) and bool((index[~qm] == -1).all())


def test_distances_are_exact_for_the_returned_keys(skimage_image) -> None:
    x = skimage_image("astronaut", 32)
    y = torch.roll(x, (5, 9), (0, 1))
    approx = patch_match(y, x, 5, iterations=4, seed=1)
    exact_distance = (
        reference.ssd_matrix_rows(
            reference.unfold_patches(y[None], 5).reshape(-1, 75),
            reference.unfold_patches(x[None], 5).reshape(-1, 75)[approx.index.reshape(-1)],
        )
        / 75
    )
    assert torch.equal(approx.distance.reshape(-1), exact_distance.float())


@pytest.mark.parametrize("alpha", [None, 0.005])
def test_recall_against_exact_search(skimage_image, alpha) -> None:
    x = skimage_image("chelsea", 40)
    y = torch.roll(x, (7, -11), (0, 1))  # a reshuffled image: most patches exist in x
    exact = patch_nn(y, x, 7, alpha=alpha)
    approx = patch_match(y, x, 7, alpha=alpha, iterations=8, seed=0)
    recall = float((approx.index == exact.index).float().mean())
    # Normalized search: the per-key minima are themselves PatchMatch estimates, so recall is lower.
    assert recall >= (0.9 if alpha is None else 0.85), recall
    assert float(approx.distance.mean()) <= 1.1 * float(exact.distance.mean())
    if alpha is None:
        assert bool((approx.distance >= exact.distance).all())  # never better than the optimum


def test_seeds_and_threads() -> None:
    q, k = torch.rand(1, 20, 20, 3), torch.rand(1, 18, 22, 3)
    a = patch_match(q, k, 5, iterations=2, seed=1)
    b = patch_match(q, k, 5, iterations=2, seed=2)
    assert not torch.equal(a.index, b.index)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = patch_match(q, k, 5, iterations=2, seed=1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.index, c.index) and torch.equal(a.distance, c.distance)


def test_more_iterations_never_hurt() -> None:
    q, k = torch.rand(1, 24, 24, 3), torch.rand(1, 24, 24, 3)
    scores = [float(patch_match(q, k, 5, iterations=n, seed=4).distance.mean()) for n in (0, 2, 6)]
    assert scores[0] >= scores[1] >= scores[2]


def test_image_api() -> None:  # opcheck: python_tests/test_op_contracts.py with patch_nn/samples.py
    q, k = torch.rand(9, 10, 3), torch.rand(8, 8, 3)
    result = patch_match(q, k, 3, alpha=0.01, iterations=2)
    assert isinstance(result, PatchNNResult) and result.index.shape == (7, 8)


BAD = [
    ({"iterations": -1}, ValueError, r"argument 'iterations' must be >= 0, got -1"),
    ({"seed": -5}, ValueError, r"argument 'seed' must be in \[0, 2\*\*63\)"),
    ({"alpha": -1.0}, ValueError, r"argument 'alpha' must be None or a finite number > 0"),
    ({"init": torch.zeros(1, 3, 3, dtype=torch.long)}, ValueError, r"argument 'init' must have shape \[1, 4, 4\]"),
    (
        {"key_mask": torch.zeros(1, 4, 4, dtype=torch.bool)},
        ValueError,
        r"argument 'key_mask' must select at least one key",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
def test_bad_input(kwargs, error, message) -> None:
    with pytest.raises(error, match=r"vision_kernels\.patch_match: " + message):
        patch_match(torch.rand(1, 6, 6, 3), torch.rand(1, 6, 6, 3), 3, **kwargs)
