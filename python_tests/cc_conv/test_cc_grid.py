"""The centred grid of cc_conv2d (DESIGN.md 2.4) and the kernel plans built from it."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vision_kernels.ops import cc_conv2d_grid
from vision_kernels.ops.cc_conv_grid import axis_grid, forward_plan, input_grad_plan, resolve_output
from vision_kernels.reference.cc_conv import axis_phases


@pytest.mark.parametrize(
    ("n_in", "n_out", "scale", "support"),
    [(64, 96, 1.5, 3), (64, 44, 0.7, 3), (10, 13, 1.3, 4), (10, 27, 2.7, 4), (5, 3, 0.6, 2), (7, 7, 1.0, 3)],
)
def test_positions_follow_the_centred_grid_equation(n_in: int, n_out: int, scale: float, support: int) -> None:
    grid = axis_grid(n_in, n_out, scale, support)
    i = np.arange(n_out)
    exact = i / scale + (n_in - 1) / 2 - (n_out - 1) / (2 * scale)
    np.testing.assert_allclose(grid.position, exact, atol=2.0**-20)
    # Symmetric about the input's centre: x(n_out - 1 - i) = (n_in - 1) - x(i).
    np.testing.assert_allclose(grid.position[::-1], (n_in - 1) - grid.position, atol=2.0**-19)
    # The window [x - K/2, x + K/2) starts at start(i) and holds exactly K pixels.
    assert np.all(grid.start >= grid.position - support / 2 - 1e-9)
    assert np.all(grid.start - 1 < grid.position - support / 2)
    offsets = grid.offsets[grid.phase]  # [n_out, K]
    np.testing.assert_allclose(offsets, grid.start[:, None] + np.arange(support) - grid.position[:, None], atol=1e-12)
    assert np.all(offsets >= -support / 2 - 1e-12) and np.all(offsets < support / 2)


@pytest.mark.parametrize(("scale", "phases"), [(1.0, 1), (2.0, 2), (0.5, 1), (1.5, 3), (0.7, 7), (1.3, 13), (2.7, 27)])
def test_phase_count_is_the_numerator_of_the_scale(scale: float, phases: int) -> None:
    # s = p / q in lowest terms: phases repeat every p outputs and are distinct within a period.
    assert Fraction(scale).limit_denominator(100).numerator == phases
    n_in = 100
    grid = axis_grid(n_in, math.floor(n_in * scale + 1e-6), scale, 4)
    assert grid.phases == phases
    assert np.array_equal(grid.phase, np.arange(grid.n_out) % phases)


def test_scale_one_has_integer_offsets() -> None:
    grid = cc_conv2d_grid((9, 12), (3, 4))
    assert grid.phases == (1, 1)
    np.testing.assert_array_equal(grid.y.offsets, [[-1, 0, 1]])
    np.testing.assert_array_equal(grid.x.offsets, [[-2, -1, 0, 1]])
    offsets = grid.tap_offsets(torch.float64)
    assert offsets.shape == (1, 1, 3, 4, 2)
    assert offsets[0, 0, 2, 0].tolist() == [1.0, -2.0]


@given(
    n_in=st.integers(1, 60),
    scale=st.floats(0.26, 4.0),
    support=st.integers(4, 7),
)
def test_reference_and_op_agree_on_the_grid(n_in: int, scale: float, support: int) -> None:
    n_out = max(1, math.floor(n_in * scale + 1e-6))
    grid = axis_grid(n_in, n_out, scale, support)
    start, phase, offsets = axis_phases(n_in, n_out, scale, support)
    assert np.array_equal(grid.start, start.numpy())
    assert np.array_equal(grid.phase, phase.numpy())
    np.testing.assert_array_equal(grid.offsets, offsets.numpy())


def test_snapping_merges_phases_equal_up_to_rounding() -> None:
    # 0.1 * 3 != 0.3 in floating point; both scales give the same grid after snapping.
    a, b = axis_grid(30, 9, 0.1 * 3, 4), axis_grid(30, 9, 0.3, 4)
    assert a.phases == b.phases == 3
    np.testing.assert_array_equal(a.offsets, b.offsets)


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
@pytest.mark.parametrize(("n_in", "n_out", "scale", "support"), [(9, 13, 1.5, 3), (10, 7, 0.7, 3), (6, 6, 1.0, 5)])
def test_plans(n_in: int, n_out: int, scale: float, support: int, padding_mode: str) -> None:
    grid = axis_grid(n_in, n_out, scale, support)
    plan = forward_plan(n_in, n_out, scale, support, padding_mode)
    taps = grid.start[:, None] + np.arange(support)
    if padding_mode == "zeros":
        expected = np.where((taps >= 0) & (taps < n_in), taps, -1)
    else:
        expected = np.clip(taps, 0, n_in - 1)
    np.testing.assert_array_equal(plan.taps.numpy(), expected)
    np.testing.assert_array_equal(plan.group.numpy(), grid.phase)
    for g in range(plan.groups):
        members = plan.order[plan.offsets[g] : plan.offsets[g + 1]]
        assert torch.all(plan.group[members] == g) and torch.all(members.diff() > 0)

    # The transposed plan lists, for every input index, exactly the (output, tap) pairs that read it,
    # and pairs[g, a] names the (phase, tap) of each.
    reverse = input_grad_plan(n_in, n_out, scale, support, padding_mode)
    pairs = reverse.pairs.numpy()
    for y in range(n_in):
        received = sorted((int(grid.phase[i]), t, i) for i, t in zip(*np.nonzero(expected == y), strict=True))
        row = reverse.taps[y].numpy()
        group = int(reverse.group[y])
        assert [i for _, _, i in received] == [i for i in row if i >= 0]
        assert [(p, t) for p, t, _ in received] == [tuple(pair) for pair in pairs[group] if pair[0] >= 0]


def test_resolve_output_rules() -> None:
    assert resolve_output((10, 20), None, None) == ((10, 20), (1.0, 1.0))
    assert resolve_output((10, 20), None, 0.7) == ((7, 14), (0.7, 0.7))
    assert resolve_output((10, 20), None, (2.7, 1.3)) == ((27, 26), (2.7, 1.3))
    assert resolve_output((10, 20), (15, 5), None) == ((15, 5), (1.5, 0.25))
    assert resolve_output((10, 20), 30, (2.0, 2.0)) == ((30, 30), (2.0, 2.0))
    assert resolve_output((64, 64), None, 0.7)[0] == (44, 44)  # floor(44.8)


@pytest.mark.parametrize(
    ("size", "scale", "error", "message"),
    [
        (None, 0.0, ValueError, r"argument 'scale' must be finite and > 0, got 0.0 for the height"),
        (None, (1.0, -2.0), ValueError, r"argument 'scale' must be finite and > 0, got -2.0 for the width"),
        (None, float("nan"), ValueError, r"argument 'scale' must be finite and > 0, got nan"),
        (None, float("inf"), ValueError, r"argument 'scale' must be finite and > 0, got inf"),
        (None, 0.05, ValueError, r"argument 'scale' gives an empty output: 10 input pixels x scale 0.05 < 1 pixel"),
        ((0, 4), None, ValueError, r"argument 'size' must be >= 1, got 0 for the height"),
        ((4, -1), None, ValueError, r"argument 'size' must be >= 1, got -1 for the width"),
        ((4.5, 2), None, TypeError, r"argument 'size' must be an int or a pair of ints"),
        (None, "2", TypeError, r"argument 'scale' must be a number or a pair"),
        (None, (1.0, 2.0, 3.0), TypeError, r"argument 'scale' must be a number or a pair"),
    ],
)
def test_bad_geometry(size: object, scale: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=r"vision_kernels\.cc_conv2d_grid: " + message):
        cc_conv2d_grid((10, 12), 3, size=size, scale=scale)  # type: ignore[arg-type]


def test_support_too_small_for_the_scale() -> None:
    cc_conv2d_grid((16, 16), 2, scale=0.5)  # 2 x 0.5 = 1: every input pixel is in a window
    with pytest.raises(
        ValueError,
        match=r"argument 'support' is too small for the scale: support 3 x scale 0.25 < 1 "
        r"for the height, .* use a support >= 4",
    ):
        cc_conv2d_grid((16, 16), (3, 4), scale=0.25)
    with pytest.raises(ValueError, match=r"argument 'support' must be >= 1, got 0 for the width"):
        cc_conv2d_grid((16, 16), (3, 0))
