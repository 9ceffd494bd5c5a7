"""patch_vote: parity with the reference (mean, Gaussian-weighted mean, median; weights, -1
indices, fill; images and videos; dtypes) for the CPU and emulated CUDA kernels, and bad input."""

from __future__ import annotations

import pytest
import torch

from vision_kernels.ops import patch_nn, patch_vote
from vision_kernels.ops.patch_nn import default_vote_sigma, normalize_patch_size
from vision_kernels.reference import patch_nn as reference
from vision_kernels.testing import emulated

OP = torch.ops.vision_kernels.patch_vote


def cpu_kernel(values, index, patch, reduction="mean", sigma=None, weights=None, fill=0.0):
    return patch_vote(values, index, patch, reduction=reduction, sigma=sigma, weights=weights, fill=fill)


def cuda_emulated(values, index, patch, reduction="mean", sigma=None, weights=None, fill=0.0):
    p = normalize_patch_size(patch)
    s = default_vote_sigma(p) if sigma is None else sigma
    return emulated(OP)(values, index, weights, *p, reduction, float(s[0]), float(s[1]), float(fill))


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def check(kernel, values, index, patch, reduction, *, sigma=None, weights=None, fill=0.0, atol=1e-6) -> torch.Tensor:
    got = kernel(values, index, patch, reduction=reduction, sigma=sigma, weights=weights, fill=fill)
    p = normalize_patch_size(patch)
    want = reference.patch_vote(
        values,
        index,
        p,
        reduction=reduction,
        sigma=default_vote_sigma(p) if sigma is None else sigma,
        weights=weights,
        fill=fill,
    )
    assert got.dtype == values.dtype and got.shape == want.shape
    torch.testing.assert_close(
        got.double(), want.double(), rtol=1e-5 if values.dtype != torch.float64 else 1e-12, atol=atol
    )
    return got


def random_index(grid, value_grid_size, generator, missing=0.2) -> torch.Tensor:
    index = torch.randint(0, value_grid_size, grid, generator=generator)
    return torch.where(torch.rand(grid, generator=generator) < missing, -1, index)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("reduction", ["mean", "gaussian", "median"])
@pytest.mark.parametrize(
    ("values_shape", "grid", "patch"),
    [((1, 9, 10, 3), (1, 7, 8), 3), ((3, 8, 7, 2), (2, 5, 6), (2, 3, 2)), ((2, 6, 6, 1), (1, 6, 6), 1)],
)
def test_parity(kernel, reduction, values_shape, grid, patch) -> None:
    g = torch.Generator().manual_seed(len(reduction))
    values = torch.rand(values_shape, generator=g)
    p = normalize_patch_size(patch)
    value_grid = (values_shape[0] - p[0] + 1) * (values_shape[1] - p[1] + 1) * (values_shape[2] - p[2] + 1)
    index = random_index(grid, value_grid, g)
    weights = torch.rand(grid, generator=g) * 2
    check(kernel, values, index, patch, reduction, fill=-1.0)
    check(kernel, values, index, patch, reduction, weights=weights, sigma=(0.7, 1.3))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(kernel, dtype) -> None:
    g = torch.Generator().manual_seed(3)
    values = torch.rand((1, 8, 9, 3), generator=g).to(dtype)
    index = random_index((1, 6, 7), 42, g)
    tolerance = {torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for reduction in ("mean", "gaussian", "median"):
        check(kernel, values, index, 3, reduction, atol=tolerance)


@pytest.mark.parametrize("kernel", KERNELS)
def test_identity_matches_rebuild_the_image(kernel) -> None:
    image = torch.rand(1, 12, 13, 3)
    found = patch_nn(image, image, 5)  # every patch matches itself
    for reduction in ("mean", "gaussian", "median"):
        torch.testing.assert_close(kernel(image, found.index, 5, reduction=reduction), image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_uncovered_pixels_get_fill_and_zero_weights_too(kernel) -> None:
    values = torch.rand(1, 6, 6, 2)
    index = torch.full((1, 4, 4), -1)
    index[0, 0, 0] = 5
    out = kernel(values, index, 3, fill=7.0)
    assert bool((out[0, 3:, :] == 7).all()) and bool((out[0, :3, :3] != 7).all())
    weights = torch.zeros(1, 4, 4)
    assert bool((kernel(values, index, 3, weights=weights, fill=-2.0) == -2).all())


def test_image_inputs_and_strided_values() -> None:
    values = torch.rand(10, 3, 11).permute(0, 2, 1)  # [10, 11, 3], non-contiguous
    index = torch.randint(0, 8 * 9, (8, 9))
    out = patch_vote(values, index, 3, reduction="median")
    assert out.shape == (10, 11, 3)
    want = reference.patch_vote(values[None], index[None], 3, reduction="median")[0]
    assert torch.equal(out, want)


def test_meta() -> None:  # opcheck: python_tests/test_op_contracts.py with patch_nn/samples.py
    out = patch_vote(torch.empty(1, 6, 7, 2, device="meta"), torch.empty(1, 4, 5, dtype=torch.long, device="meta"), 3)
    assert out.shape == (1, 6, 7, 2)


BAD = [
    (
        lambda: (torch.rand(1, 6, 6, 2), torch.randint(0, 16, (1, 4, 4)).int(), {}),
        TypeError,
        r"argument 'index' must have dtype in \{int64\}",
    ),
    (
        lambda: (torch.rand(1, 6, 6, 2), torch.full((1, 4, 4), 16), {}),
        IndexError,
        r"argument 'index' must hold flat indices into the value patch grid of 16 positions \(or -1\), "
        r"got values in \[16, 16\]",
    ),
    (
        lambda: (torch.rand(1, 6, 6, 2), torch.full((1, 4, 4), -2), {}),
        IndexError,
        r"argument 'index' must hold flat indices",
    ),
    (
        lambda: (torch.rand(1, 6, 6, 2), torch.zeros(1, 4, 4, dtype=torch.long), {"reduction": "max"}),
        ValueError,
        r"argument 'reduction' must be one of 'mean', 'gaussian', 'median', got 'max'",
    ),
    (
        lambda: (torch.rand(1, 6, 6, 2), torch.zeros(1, 4, 4, dtype=torch.long), {"sigma": (0.0, 1.0)}),
        ValueError,
        r"argument 'sigma' must be > 0",
    ),
    (
        lambda: (torch.rand(1, 6, 6, 2), torch.zeros(1, 4, 4, dtype=torch.long), {"weights": -torch.ones(1, 4, 4)}),
        ValueError,
        r"argument 'weights' must be >= 0",
    ),
    (
        lambda: (torch.rand(1, 6, 6, 2), torch.zeros(1, 4, 4, dtype=torch.long), {"weights": torch.ones(1, 4, 3)}),
        ValueError,
        r"argument 'weights' must have shape \[1, 4, 4\]",
    ),
    (
        lambda: (torch.rand(1, 2, 6, 2), torch.zeros(1, 4, 4, dtype=torch.long), {}),
        ValueError,
        r"argument 'patch_size' \(1, 3, 3\) must fit in 'values'",
    ),
    (lambda: (torch.rand(6, 6, 2), torch.zeros(4, 4), {}), TypeError, r"argument 'index' must have dtype in \{int64\}"),
]


@pytest.mark.parametrize(("make", "error", "message"), BAD)
def test_bad_input(make, error, message) -> None:
    values, index, kwargs = make()
    with pytest.raises(error, match=r"vision_kernels\.patch_vote: " + message):
        patch_vote(values, index, 3, **kwargs)
