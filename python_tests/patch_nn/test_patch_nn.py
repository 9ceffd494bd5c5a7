"""patch_nn (exact space-time patch search): equality with the brute-force reference for the CPU
kernel and the emulated CUDA kernel (plain and normalized, images and videos, masks, ties, dtypes,
strides, extreme magnitudes, every screening instruction set), torch.library contracts, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vision_kernels.ops import PatchNNResult, patch_nn, valid_patch_mask
from vision_kernels.ops.patch_nn import normalize_patch_size
from vision_kernels.reference import patch_nn as reference
from vision_kernels.testing import emulated

OP = torch.ops.vision_kernels.patch_nn


def cpu_kernel(q, k, patch, alpha=None, query_mask=None, key_mask=None) -> PatchNNResult:
    return patch_nn(q, k, patch, alpha=alpha, query_mask=query_mask, key_mask=key_mask)


def cuda_emulated(q, k, patch, alpha=None, query_mask=None, key_mask=None) -> PatchNNResult:
    return PatchNNResult(*emulated(OP)(q, k, query_mask, key_mask, *normalize_patch_size(patch), alpha, True))


KERNELS = [
    pytest.param(cpu_kernel, id="cpu"),
    pytest.param(cuda_emulated, id="cuda_emulated", marks=pytest.mark.emulation),
]


def assert_exact(kernel, q, k, patch, alpha=None, query_mask=None, key_mask=None) -> PatchNNResult:
    got = kernel(q, k, patch, alpha=alpha, query_mask=query_mask, key_mask=key_mask)
    want_index, want_distance = reference.patch_nn(q, k, patch, alpha=alpha, query_mask=query_mask, key_mask=key_mask)
    assert got.index.dtype == torch.long and got.index.shape == want_index.shape
    assert got.distance.dtype == want_distance.dtype
    mismatch = (got.index != want_index).nonzero()
    assert mismatch.numel() == 0, f"{len(mismatch)} indices differ, first at {mismatch[0].tolist()}"
    assert torch.equal(got.distance, want_distance)
    return got


def quantized(shape, levels: int, generator: torch.Generator) -> torch.Tensor:
    """Values on a coarse grid: many exact ties between patch distances."""
    return (torch.rand(shape, generator=generator) * levels).round() / levels


CASES = [
    # (query shape, key shape, patch size)
    ((1, 9, 11, 3), (1, 10, 8, 3), 3),
    ((1, 12, 10, 1), (1, 7, 13, 1), (2, 3)),
    ((3, 7, 8, 2), (2, 9, 6, 2), (2, 3, 3)),
    ((1, 5, 5, 3), (1, 5, 5, 3), 5),  # one patch per input
    ((2, 6, 7, 4), (1, 6, 5, 4), 1),  # 1x1 patches
    ((1, 20, 21, 3), (1, 18, 30, 3), (1, 7, 7)),  # GPNN's patch, several key tiles
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("alpha", [None, 0.02])
@pytest.mark.parametrize(("q_shape", "k_shape", "patch"), CASES)
def test_equals_reference(kernel, alpha, q_shape, k_shape, patch) -> None:
    g = torch.Generator().manual_seed(sum(q_shape) + sum(k_shape))
    q, k = torch.rand(q_shape, generator=g), torch.rand(k_shape, generator=g)
    assert_exact(kernel, q, k, patch, alpha)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("alpha", [None, 0.01])
def test_ties_go_to_the_lowest_key_index(kernel, alpha) -> None:
    g = torch.Generator().manual_seed(1)
    q, k = quantized((2, 8, 9, 2), 2, g), quantized((2, 9, 8, 2), 2, g)
    result = assert_exact(kernel, q, k, (1, 2, 2), alpha)
    # A constant key array: every key ties, the first one wins.
    flat = torch.full((1, 6, 6, 2), 0.5)
    assert bool((kernel(q, flat, (1, 2, 2), alpha=alpha).index == 0).all())
    assert result.index.min() >= 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("alpha", [None, 0.05])
def test_masks(kernel, alpha) -> None:
    g = torch.Generator().manual_seed(2)
    q, k = quantized((1, 11, 12, 3), 3, g), torch.rand((1, 10, 13, 3), generator=g)
    qm = torch.rand((1, 9, 10), generator=g) > 0.4
    km = torch.rand((1, 8, 11), generator=g) > 0.7
    result = assert_exact(kernel, q, k, 3, alpha, query_mask=qm, key_mask=km)
    assert bool((result.index[~qm] == -1).all()) and bool(torch.isinf(result.distance[~qm]).all())
    assert bool(km.reshape(-1)[result.index[qm]].all()), "a masked key was chosen"


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtypes(kernel, dtype) -> None:
    g = torch.Generator().manual_seed(3)
    q, k = torch.rand((1, 9, 10, 3), generator=g).to(dtype), torch.rand((1, 8, 12, 3), generator=g).to(dtype)
    for alpha in (None, 0.02):
        result = assert_exact(kernel, q, k, 3, alpha)
        assert result.distance.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_and_broadcast_inputs(kernel) -> None:
    g = torch.Generator().manual_seed(4)
    base = torch.rand((2, 14, 3, 16), generator=g)
    q = base.permute(0, 1, 3, 2)[:, ::2, 1:15]  # [2, 7, 14, 3], every stride unusual
    k = torch.rand((1, 9, 9, 3), generator=g).expand(3, 9, 9, 3)  # stride 0 along T
    assert not q.is_contiguous()
    assert_exact(kernel, q, k, (2, 3, 3), 0.02)
    qm = torch.ones((1, 1, 1), dtype=torch.bool).expand(1, 5, 12)
    assert_exact(kernel, q, k, (2, 3, 3), None, query_mask=qm)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("scale", [1e17, 1e-30])
def test_extreme_magnitudes_stay_exact(kernel, scale) -> None:
    # 1e17: beyond the float32 screening range (screened in float64); 1e-30: products underflow.
    g = torch.Generator().manual_seed(5)
    q, k = (
        torch.rand((1, 8, 9, 2), generator=g).double() * scale,
        torch.rand((1, 9, 8, 2), generator=g).double() * scale,
    )
    for alpha in (None, 0.3):
        assert_exact(kernel, q.float(), k.float(), 3, None if alpha is None else alpha * scale**2)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rounding_of_the_screening_form_is_bounded(kernel) -> None:
    # Values near 100 that differ by ~1e-3: |q|^2 + |k|^2 - 2 q.k in float32 is off by far more than
    # the gaps between candidate distances, so only a rigorous error bound keeps the result exact.
    g = torch.Generator().manual_seed(8)
    q = 100 + 0.01 * torch.rand((1, 9, 10, 3), generator=g)
    k = 100 + 0.01 * torch.rand((1, 10, 11, 3), generator=g)
    for alpha in (None, 1e-5):
        assert_exact(kernel, q, k, 3, alpha)


@pytest.mark.parametrize("isa", ["portable", "avx2", ""])
def test_every_cpu_screening_kernel(monkeypatch, isa: str) -> None:
    monkeypatch.setenv("VK_SCREEN_ISA", isa)
    g = torch.Generator().manual_seed(6)
    q, k = quantized((1, 19, 23, 3), 16, g), quantized((1, 21, 17, 3), 16, g)
    for alpha in (None, 0.01):
        assert_exact(cpu_kernel, q, k, 5, alpha)


def test_natural_images(skimage_image) -> None:
    source = skimage_image("astronaut", 26)
    other = skimage_image("coffee", 22)
    assert_exact(cpu_kernel, source[None], source[None], 7, 0.005)
    for alpha in (None, 0.005):
        assert_exact(cpu_kernel, other[None], source[None], 7, alpha)


@pytest.mark.emulation
def test_natural_image_emulated(skimage_image) -> None:
    source = skimage_image("chelsea", 18)
    other = skimage_image("coffee", 16)
    assert_exact(cuda_emulated, other[None], source[None], 5, 0.005)


def test_self_search_finds_itself() -> None:
    x = torch.rand(1, 16, 15, 3)
    result = patch_nn(x, x, 5)
    grid = torch.arange(result.index.numel()).view(result.index.shape)
    assert torch.equal(result.index, grid) and bool((result.distance == 0).all())


@given(
    t=st.integers(1, 2),
    h=st.integers(3, 9),
    w=st.integers(3, 9),
    c=st.integers(1, 3),
    pt=st.integers(1, 2),
    ph=st.integers(1, 3),
    pw=st.integers(1, 3),
    levels=st.sampled_from([2, 5, 1000]),
    normalized=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_equals_reference(t, h, w, c, pt, ph, pw, levels, normalized, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    pt = min(pt, t)
    q = quantized((t, h, w, c), levels, g)
    k = quantized((t, w, h, c), levels, g)
    assert_exact(cpu_kernel, q, k, (pt, ph, pw), 0.05 if normalized else None)


def test_64bit_offsets() -> None:
    # Frames 2^31 + 7 elements apart: element offsets exceed int32; untouched pages stay unallocated.
    stride = 2**31 + 7
    storage = torch.empty(stride + 5 * 4 * 3)
    frames = torch.rand(2, 5, 4, 3)
    storage[: frames[0].numel()] = frames[0].reshape(-1)
    storage[stride : stride + frames[1].numel()] = frames[1].reshape(-1)
    queries = storage.as_strided((2, 5, 4, 3), (stride, 12, 3, 1))
    keys = torch.rand(3, 6, 5, 3)
    for alpha in (None, 0.01):
        for q, k, q_ref, k_ref in ((queries, keys, frames, keys), (keys, queries, keys, frames)):
            got = patch_nn(q, k, (1, 3, 3), alpha=alpha)
            want = reference.patch_nn(q_ref, k_ref, (1, 3, 3), alpha=alpha)
            assert torch.equal(got.index, want[0]) and torch.equal(got.distance, want[1])


def test_image_inputs_give_image_grids() -> None:
    q, k = torch.rand(10, 12, 3), torch.rand(9, 9, 3)
    result = patch_nn(
        q, k, 3, query_mask=torch.ones(8, 10, dtype=torch.bool), key_mask=torch.ones(7, 7, dtype=torch.bool)
    )
    assert result.index.shape == (8, 10) and result.distance.shape == (8, 10)
    video = patch_nn(q[None], k[None], 3)
    assert torch.equal(video.index[0], result.index)


def test_numpy_in_numpy_out() -> None:
    rng = np.random.default_rng(0)
    q, k = rng.random((9, 9, 3), dtype=np.float32), rng.random((8, 10, 3), dtype=np.float32)
    result = patch_nn(q, k, 3)
    assert isinstance(result, PatchNNResult) and isinstance(result.index, np.ndarray)
    want = reference.patch_nn(torch.from_numpy(q)[None], torch.from_numpy(k)[None], 3)
    np.testing.assert_array_equal(result.index, want[0][0].numpy())


def test_torch_compile_fullgraph() -> None:
    def best_distance(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return patch_nn(q, k, 3, alpha=0.01).distance.mean()

    q, k = torch.rand(1, 8, 8, 3), torch.rand(1, 9, 7, 3)
    assert torch.equal(torch.compile(best_distance, fullgraph=True)(q, k), best_distance(q, k))


def test_meta_tensors_give_shapes() -> None:
    q, k = torch.empty(2, 9, 10, 3, device="meta"), torch.empty(3, 8, 8, 3, device="meta")
    result = patch_nn(q, k, (2, 3, 3))
    assert result.index.shape == (1, 7, 8) and result.index.device.type == "meta"


def test_valid_patch_mask() -> None:
    hole = torch.zeros(10, 12, dtype=torch.bool)
    hole[4, 5] = True
    valid = valid_patch_mask(~hole, 3)
    assert valid.shape == (8, 10)
    assert not bool(valid[2:5, 3:6].any()) and int((~valid).sum()) == 9
    video = valid_patch_mask(torch.ones(4, 5, 6, dtype=torch.bool), (2, 3, 3))
    assert video.shape == (3, 3, 4) and bool(video.all())


BAD = [
    (lambda: (torch.rand(5, 5), torch.rand(5, 5, 3), 3, {}), ValueError, r"argument 'queries' must have 4 dimensions"),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 2), 3, {}),
        ValueError,
        r"argument 'keys' must have size 3 in dimension 3",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 4, 9, 3), 5, {}),
        ValueError,
        r"argument 'patch_size' \(1, 5, 5\) must fit in 'keys' of shape \[1, 4, 9, 3\]",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 3), (2, 3, 3), {}),
        ValueError,
        r"argument 'patch_size' \(2, 3, 3\) must fit in 'queries'",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 3), 0, {}),
        ValueError,
        r"argument 'patch_size' must be positive",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 3), 2.5, {}),
        TypeError,
        r"argument 'patch_size' must be an int",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 3).double(), 3, {}),
        TypeError,
        r"argument 'keys' must have the dtype of 'queries'",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3).int(), torch.rand(1, 5, 5, 3).int(), 3, {}),
        TypeError,
        r"argument 'queries' must have dtype in",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 0), torch.rand(1, 5, 5, 0), 3, {}),
        ValueError,
        r"argument 'queries' must have size >= 1 in dimension 3",
    ),
    (
        lambda: (
            torch.rand(1, 5, 5, 3),
            torch.rand(1, 5, 5, 3),
            3,
            {"key_mask": torch.ones(1, 3, 4, dtype=torch.bool)},
        ),
        ValueError,
        r"argument 'key_mask' must have shape \[1, 3, 3\]",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 3), 3, {"query_mask": torch.ones(1, 3, 3)}),
        TypeError,
        r"argument 'query_mask' must have dtype in \{bool\}",
    ),
    (
        lambda: (
            torch.rand(1, 5, 5, 3),
            torch.rand(1, 5, 5, 3),
            3,
            {"key_mask": torch.zeros(1, 3, 3, dtype=torch.bool)},
        ),
        ValueError,
        r"argument 'key_mask' must select at least one key position, got all False",
    ),
    (
        lambda: (
            torch.rand(1, 5, 5, 3),
            torch.rand(1, 5, 5, 3),
            3,
            {"query_mask": torch.zeros(1, 3, 3, dtype=torch.bool)},
        ),
        ValueError,
        r"argument 'query_mask' must select at least one query position",
    ),
    (
        lambda: (torch.tensor([[[[0.0, float("nan"), 0.0]]]]).expand(1, 4, 4, 3), torch.rand(1, 5, 5, 3), 3, {}),
        ValueError,
        r"argument 'queries' must be finite \(no NaN or Inf\), got nan",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.full((1, 5, 5, 3), float("inf")), 3, {}),
        ValueError,
        r"argument 'keys' must be finite",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 3), 3, {"alpha": 0.0}),
        ValueError,
        r"argument 'alpha' must be None or a finite number > 0, got 0.0",
    ),
    (
        lambda: (torch.rand(1, 5, 5, 3), torch.rand(1, 5, 5, 3), 3, {"alpha": float("inf")}),
        ValueError,
        r"argument 'alpha' must be None or a finite number > 0",
    ),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("make", "error", "message"), BAD)
def test_bad_input(kernel, make, error, message) -> None:
    q, k, patch, kwargs = make()
    with pytest.raises(error, match=r"vision_kernels\.patch_nn: " + message):
        if kernel is cpu_kernel or "patch_size" in message:
            patch_nn(q, k, patch, **kwargs)
        else:
            kernel(q, k, patch, **kwargs)


def test_bad_argument_types_and_devices() -> None:
    with pytest.raises(TypeError, match=r"argument 'queries' must be a torch.Tensor, numpy.ndarray or cupy.ndarray"):
        patch_nn([[1.0]], torch.rand(3, 3, 1), 1)
    with pytest.raises(
        ValueError, match=r"arguments 'queries' and 'keys' must be on the same device, got cpu and meta"
    ):
        patch_nn(torch.rand(1, 5, 5, 3), torch.empty(1, 5, 5, 3, device="meta"), 3)


def test_native_core_checks_its_own_arguments() -> None:
    from vision_kernels import _native

    ref = _native.tensor_ref
    q = torch.rand(1, 6, 6, 3)
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    index, distance = torch.empty(1, 4, 4, dtype=torch.long), torch.empty(1, 4, 5)
    with pytest.raises(ValueError, match=r"argument 'out_distance' must have shape \[1, 4, 4\]"):
        _native.cpu_module().patch_nn_cpu(
            ref(q), ref(q), ref(mask), ref(mask), 1, 3, 3, float("nan"), False, ref(index), ref(distance)
        )
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    distance = torch.empty(1, 4, 4)  # kept alive: the core writes through its pointer
    with pytest.raises(ValueError, match=r"argument 'key_mask' must select at least one key position"):
        _native.cpu_module().patch_nn_cpu(
            ref(q), ref(q), ref(mask), ref(empty), 1, 3, 3, float("nan"), False, ref(index), ref(distance)
        )
