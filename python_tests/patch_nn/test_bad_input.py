"""patch_nn, patch_match and patch_vote refuse bad input with one clear message (issue 16 items 1, 2, 4, 9),
on the CPU kernel and the emulated CUDA kernel.

Item 1 was a memory-safety bug: a ``query_mask``/``key_mask`` on the meta device next to CPU inputs made
the dispatcher run the fake kernel, which returned uninitialized CPU tensors (indices ~1.4e14). Every
tensor argument of every op is now checked for its device before any kernel body runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vision_kernels.ops import PatchNNResult, patch_match, patch_nn, patch_vote, valid_patch_mask
from vision_kernels.testing import DLPackProducer, each_tensor_moved, emulated

NN, MATCH, VOTE = (torch.ops.vision_kernels.patch_nn, torch.ops.vision_kernels.patch_match,
                   torch.ops.vision_kernels.patch_vote)  # fmt: skip


def video(t: int = 1, h: int = 8, w: int = 9, c: int = 3) -> torch.Tensor:
    return torch.rand(t, h, w, c)


def search_arguments() -> dict[str, object]:
    """Video inputs [1, 8, 9, 3] with patch 3: query and key grids [1, 6, 7] (42 keys)."""
    return {
        "queries": video(),
        "keys": video(),
        "query_mask": torch.ones(1, 6, 7, dtype=torch.bool),
        "key_mask": torch.ones(1, 6, 7, dtype=torch.bool),
    }


# Each kernel takes the public arguments; the emulated ones call the op's CUDA kernel on the host.


def nn_cpu(queries, keys, patch_size=3, alpha=None, query_mask=None, key_mask=None, check_finite=True):
    return patch_nn(queries, keys, patch_size, alpha=alpha, query_mask=query_mask, key_mask=key_mask,
                    check_finite=check_finite)  # fmt: skip


def nn_emulated(queries, keys, patch_size=3, alpha=None, query_mask=None, key_mask=None, check_finite=True):
    return PatchNNResult(
        *emulated(NN)(queries, keys, query_mask, key_mask, 1, patch_size, patch_size, alpha, check_finite)
    )


def match_cpu(queries, keys, patch_size=3, query_mask=None, key_mask=None, init=None, iterations=2, seed=0,
              check_finite=True):  # fmt: skip
    return patch_match(queries, keys, patch_size, query_mask=query_mask, key_mask=key_mask, init=init,
                       iterations=iterations, seed=seed, check_finite=check_finite)  # fmt: skip


def match_emulated(queries, keys, patch_size=3, query_mask=None, key_mask=None, init=None, iterations=2, seed=0,
                   check_finite=True):  # fmt: skip
    patch = (1, patch_size, patch_size)
    result = emulated(MATCH)(queries, keys, query_mask, key_mask, None, *patch, iterations, seed, init, check_finite)
    return PatchNNResult(*result)


def vote_cpu(values, index, weights=None, patch_size=3, reduction="mean"):
    return patch_vote(values, index, patch_size, weights=weights, reduction=reduction)


def vote_emulated(values, index, weights=None, patch_size=3, reduction="mean"):
    return emulated(VOTE)(values, index, weights, 1, patch_size, patch_size, reduction, 0.75, 0.75, 0.0)


def params(cpu, emu):
    return [pytest.param(cpu, id="cpu"), pytest.param(emu, id="cuda_emulated", marks=pytest.mark.emulation)]


SEARCHES = params(nn_cpu, nn_emulated) + params(match_cpu, match_emulated)
MATCHES = params(match_cpu, match_emulated)
VOTES = params(vote_cpu, vote_emulated)


def function_of(kernel) -> str:
    return {"nn": "patch_nn", "match": "patch_match", "vote": "patch_vote"}[kernel.__name__.split("_")[0]]


# ---------------------------------------------------------------- devices of every tensor argument


@pytest.mark.parametrize("kernel", SEARCHES)
@pytest.mark.parametrize("moved", ["queries", "keys", "query_mask", "key_mask"])
def test_search_refuses_any_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    case = dict(each_tensor_moved(search_arguments()))[moved]
    other = "keys" if moved == "queries" else moved
    message = rf"vision_kernels\.{function_of(kernel)}: arguments 'queries' and '{other}' must be on the same device"
    with pytest.raises(ValueError, match=message):
        kernel(**case)


@pytest.mark.parametrize("kernel", MATCHES)
def test_patch_match_refuses_init_on_the_meta_device(kernel) -> None:
    init = torch.zeros(1, 6, 7, dtype=torch.long, device="meta")
    with pytest.raises(
        ValueError, match=r"arguments 'queries' and 'init' must be on the same device, got cpu and meta"
    ):
        kernel(video(), video(), init=init)


@pytest.mark.parametrize("kernel", VOTES)
@pytest.mark.parametrize("moved", ["values", "index", "weights"])
def test_vote_refuses_any_tensor_argument_on_the_meta_device(kernel, moved: str) -> None:
    arguments = {"values": video(), "index": torch.zeros(1, 6, 7, dtype=torch.long), "weights": torch.ones(1, 6, 7)}
    case = dict(each_tensor_moved(arguments))[moved]
    other = "index" if moved == "values" else moved
    with pytest.raises(ValueError, match=rf"patch_vote: arguments 'values' and '{other}' must be on the same device"):
        kernel(**case)


def test_image_masks_on_the_meta_device_are_refused_by_the_public_functions() -> None:
    """The exact reproduction of the issue: 2-D image inputs, a meta mask, no garbage indices."""
    image = torch.rand(10, 10, 3)
    mask = torch.ones(8, 8, dtype=torch.bool, device="meta")
    for function in (patch_nn, patch_match):
        for name in ("query_mask", "key_mask"):
            with pytest.raises(
                ValueError, match=rf"'queries' and '{name}' must be on the same device, got cpu and meta"
            ):
                function(image, image, 3, **{name: mask})


def test_all_meta_inputs_still_give_shapes() -> None:
    q = torch.empty(1, 8, 9, 3, device="meta")
    mask = torch.ones(1, 6, 7, dtype=torch.bool, device="meta")
    assert patch_nn(q, q, 3, query_mask=mask, key_mask=mask).index.device.type == "meta"
    assert patch_match(q, q, 3, key_mask=mask).index.shape == (1, 6, 7)


# ---------------------------------------------------------------- patch_match's init, iterations, seed, alpha


@pytest.mark.parametrize("kernel", MATCHES)
@pytest.mark.parametrize("bad", [-2, 42, 10**12, -(2**62)])
def test_init_out_of_range_is_an_error(kernel, bad: int) -> None:
    init = torch.full((1, 6, 7), -1, dtype=torch.long)
    init[0, 2, 3] = bad
    message = r"patch_match: argument 'init' must hold flat indices into the key patch grid of 42 positions \(or -1"
    with pytest.raises(IndexError, match=message):
        kernel(video(), video(), init=init)


@pytest.mark.parametrize("kernel", MATCHES)
def test_init_in_range_is_used(kernel) -> None:
    init = torch.full((1, 6, 7), 41, dtype=torch.long)  # the last key, and -1 (none) elsewhere
    init[0, 0] = -1
    result = kernel(video(), video(), init=init, iterations=0)
    assert result.index.shape == (1, 6, 7) and int(result.index.min()) >= 0


@pytest.mark.parametrize("kernel", MATCHES)
def test_init_of_the_wrong_dtype_or_shape(kernel) -> None:
    with pytest.raises(TypeError, match=r"patch_match: argument 'init' must have dtype in \{int64\}, got float32"):
        kernel(video(), video(), init=torch.zeros(1, 6, 7))
    with pytest.raises(ValueError, match=r"patch_match: argument 'init' must have shape \[1, 6, 7\]"):
        kernel(video(), video(), init=torch.zeros(1, 7, 6, dtype=torch.long))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"iterations": 2.5}, TypeError, r"argument 'iterations' must be an int, got float 2.5"),
        ({"iterations": True}, TypeError, r"argument 'iterations' must be an int, got bool True"),
        ({"iterations": -1}, ValueError, r"argument 'iterations' must be >= 0, got -1"),
        ({"seed": -1}, ValueError, r"argument 'seed' must be in \[0, 2\*\*63\), got -1"),
        ({"seed": 1.0}, TypeError, r"argument 'seed' must be an int, got float"),
        ({"alpha": True}, TypeError, r"argument 'alpha' must be None or a number > 0, got bool"),
        ({"alpha": "0.1"}, TypeError, r"argument 'alpha' must be None or a number > 0, got str"),
        ({"alpha": math.nan}, ValueError, r"argument 'alpha' must be None or a finite number > 0, got nan"),
        ({"alpha": -1.0}, ValueError, r"argument 'alpha' must be None or a finite number > 0, got -1.0"),
        ({"init": [[0]]}, TypeError, r"argument 'init' must be a torch.Tensor"),
    ],
)
def test_patch_match_scalar_arguments(options, error, message) -> None:
    with pytest.raises(error, match=r"vision_kernels\.patch_match: " + message):
        patch_match(video(), video(), 3, **options)


@pytest.mark.parametrize(("alpha", "error"), [(True, TypeError), ("1", TypeError), (math.inf, ValueError)])
def test_patch_nn_alpha(alpha, error) -> None:
    with pytest.raises(error, match=r"vision_kernels\.patch_nn: argument 'alpha' must be None or a"):
        patch_nn(video(), video(), 3, alpha=alpha)


# ---------------------------------------------------------------- the same mistakes on every search


@pytest.mark.parametrize("kernel", SEARCHES)
@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: {"queries": video().long(), "keys": video().long()}, TypeError, r"argument 'queries' must have dtype"),
        (lambda: {"queries": video(), "keys": video().double()}, TypeError, r"argument 'keys' must have the dtype of"),
        (lambda: {"queries": video(c=0), "keys": video(c=0)}, ValueError, r"argument 'queries' must have size >= 1 in"),
        (lambda: {"queries": video(t=0), "keys": video()}, ValueError, r"argument 'patch_size' \(1, 3, 3\) must fit"),
        (lambda: {"queries": video(h=2), "keys": video()}, ValueError, r"argument 'patch_size' \(1, 3, 3\) must fit"),
        (
            lambda: {"queries": video().index_fill(2, torch.tensor([4]), math.nan), "keys": video()},
            ValueError,
            r"argument 'queries' must be finite \(no NaN or Inf\), got nan at index \(0, 0, 4, 0\)",
        ),
        (
            lambda: {"queries": video(), "keys": video().index_fill(1, torch.tensor([7]), -math.inf)},
            ValueError,
            r"argument 'keys' must be finite \(no NaN or Inf\), got -inf",
        ),
        (
            lambda: {**search_arguments(), "query_mask": torch.ones(1, 6, 7, dtype=torch.uint8)},
            TypeError,
            r"argument 'query_mask' must have dtype in \{bool\}, got uint8",
        ),
        (
            lambda: {**search_arguments(), "key_mask": torch.ones(6, 7, dtype=torch.bool)},
            ValueError,
            r"argument 'key_mask' must have shape \[1, 6, 7\]",
        ),
        (
            lambda: {**search_arguments(), "key_mask": torch.zeros(1, 6, 7, dtype=torch.bool)},
            ValueError,
            r"argument 'key_mask' must select at least one key position, got all False",
        ),
    ],
)
def test_search_bad_input(kernel, make, error, message) -> None:
    with pytest.raises(error, match=rf"vision_kernels\.{function_of(kernel)}: " + message):
        kernel(**make())


@pytest.mark.parametrize("kernel", SEARCHES)
def test_search_opt_out_of_the_finite_check(kernel) -> None:
    keys = video()
    keys[0, 0, 0, 0] = math.nan
    result = kernel(video(), keys, check_finite=False)
    assert result.index.shape == (1, 6, 7)


@pytest.mark.parametrize("function", [patch_nn, patch_match])
@pytest.mark.parametrize(
    ("patch_size", "error", "message"),
    [
        (0, ValueError, r"argument 'patch_size' must be positive, got \(1, 0, 0\)"),
        ((3, -1), ValueError, r"argument 'patch_size' must be positive"),
        (2.5, TypeError, r"argument 'patch_size' must be an int or a sequence of 2 or 3 ints, got 2.5"),
        ((3, 3.0), TypeError, r"argument 'patch_size' must be an int or a sequence"),
        (True, TypeError, r"argument 'patch_size' must be an int or a sequence of 2 or 3 ints, got bool"),
    ],
)
def test_patch_size(function, patch_size, error, message) -> None:
    with pytest.raises(error, match=rf"vision_kernels\.{function.__name__}: " + message):
        function(video(), video(), patch_size)


# ---------------------------------------------------------------- voting


@pytest.mark.parametrize("kernel", VOTES)
@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: (video(), torch.full((1, 6, 7), 42)), IndexError, r"argument 'index' must hold flat indices into"),
        (lambda: (video(), torch.full((1, 6, 7), -2)), IndexError, r"argument 'index' must hold flat indices into"),
        (lambda: (video(), torch.zeros(1, 6, 7)), TypeError, r"argument 'index' must have dtype in \{int64\}"),
        (lambda: (video().long(), torch.zeros(1, 6, 7, dtype=torch.long)), TypeError, r"argument 'values' must have"),
        (
            lambda: (video(), torch.zeros(1, 6, 7, dtype=torch.long), torch.full((1, 6, 7), -1.0)),
            ValueError,
            r"argument 'weights' must be >= 0",
        ),
        (
            lambda: (video(), torch.zeros(1, 6, 7, dtype=torch.long), torch.full((1, 6, 7), math.nan)),
            ValueError,
            r"argument 'weights' must be finite",
        ),
        (
            lambda: (video(), torch.zeros(1, 6, 7, dtype=torch.long), torch.ones(1, 6, 7, dtype=torch.long)),
            TypeError,
            r"argument 'weights' must have dtype in",
        ),
    ],
)
def test_vote_bad_input(kernel, make, error, message) -> None:
    with pytest.raises(error, match=r"vision_kernels\.patch_vote: " + message):
        kernel(*make())


def test_vote_and_mask_helpers_name_their_arguments() -> None:
    with pytest.raises(ValueError, match=r"vision_kernels\.patch_vote: argument 'reduction' must be one of"):
        patch_vote(video(), torch.zeros(1, 6, 7, dtype=torch.long), 3, reduction="max")
    with pytest.raises(TypeError, match=r"vision_kernels\.patch_vote: argument 'weights' must be a torch.Tensor"):
        patch_vote(video(), torch.zeros(1, 6, 7, dtype=torch.long), 3, weights=[1.0])
    with pytest.raises(TypeError, match=r"vision_kernels\.valid_patch_mask: argument 'pixel_mask' must be a torch"):
        valid_patch_mask([[True]], 3)
    with pytest.raises(ValueError, match=r"vision_kernels\.valid_patch_mask: argument 'pixel_mask' must have 2 or 3"):
        valid_patch_mask(torch.ones(5, dtype=torch.bool), 3)


# ---------------------------------------------------------------- arrays from other libraries


def test_numpy_and_dlpack_inputs() -> None:
    q, k = np.random.rand(8, 9, 3).astype(np.float32), np.random.rand(8, 9, 3).astype(np.float32)
    as_numpy = patch_nn(q, k, 3)
    assert isinstance(as_numpy.index, np.ndarray) and as_numpy.index.shape == (6, 7)
    as_torch = patch_nn(DLPackProducer(q), DLPackProducer(k), 3)
    assert isinstance(as_torch.index, torch.Tensor)
    np.testing.assert_array_equal(as_torch.index.numpy(), as_numpy.index)
    mask = np.ones((6, 7), dtype=bool)
    assert isinstance(patch_match(DLPackProducer(q), k, 3, key_mask=DLPackProducer(mask)).index, torch.Tensor)
