"""The centered sampling grid of continuous convolution (docs/DESIGN.md 2.4) and the index plans its kernels run on.

Grid, per axis, for an input of ``n_in`` pixels, an output of ``n_out`` pixels and a scale ``s > 0``
(pixel centres at integer coordinates; the output grid is centred on the input grid)::

    x(i) = i / s + (n_in - 1) / 2 - (n_out - 1) / (2 s)          i = 0 .. n_out - 1

With a support of ``K`` input pixels, output ``i`` reads the ``K`` input pixels in the half-open window
``[x(i) - K/2, x(i) + K/2)``: ``j0(i) .. j0(i) + K - 1`` with ``j0(i) = ceil(x(i) - K/2)``. Their offsets
from the output's position are::

    d_k(i) = j0(i) + k - x(i) = k - K/2 + phi(i),     phi(i) = j0(i) - (x(i) - K/2)  in [0, 1)

so the taps of output ``i`` depend on ``i`` only through its *phase* ``phi(i)``. For ``s = p / q`` in
lowest terms the phases repeat with period ``p`` (``x(i + p) = x(i) + q``) and are distinct within a
period, so an axis has ``min(p, n_out)`` phases: 1 at ``s = 1`` (integer offsets: an ordinary
convolution), 3 at 1.5, 7 at 0.7, 13 at 1.3. Phases are numbered in order of first occurrence
(output 0 has phase 0; for periodic grids ``phase(i) = i mod p``).

Snapping: ``x(i) - K/2`` is rounded to a multiple of ``2**-20`` pixel before the ``ceil``, so phases that
are equal mathematically are equal in floating point (``i / s`` carries rounding error), and window
membership at exact half-integers does not depend on that error. Offsets are exact for the snapped
positions (within ``2**-21`` pixel of the unsnapped ones).

Borders (``padding_mode``): taps outside ``[0, n_in)`` read zero (``"zeros"``, as ``F.conv2d``'s zero
padding) or the nearest edge pixel (``"replicate"``, index clamped). The weights never depend on the
padding mode, only which input value a tap reads.

Plans are the integer tables the kernels execute (see ``csrc/cc_conv/cc_conv.h``): per output index
its tap indices (``-1`` reads zero) and its weight group, the outputs sorted by group, and the group
boundaries. The forward plan's groups are the phases; the input-gradient plan is the transposed map
(for each input index, the (output, tap) pairs that read it), grouped by the pattern of
(phase, tap) pairs, so that the gradient to the input is the same gather-GEMM with rearranged weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import unset_fake_temporarily

from ._checks import ArgCheck, is_integer

__all__ = [
    "PADDING_MODES",
    "SNAP",
    "AxisGrid",
    "CCGrid",
    "AxisPlan",
    "axis_grid",
    "cc_conv2d_grid",
    "resolve_output",
    "forward_plan",
    "input_grad_plan",
]

PADDING_MODES = ("zeros", "replicate")
SNAP = 2.0**-20  # grid positions are snapped to multiples of this (in input pixels)


@dataclass(frozen=True)
class AxisGrid:
    """The grid along one axis: where each output sits and which phase (tap offsets) it uses.

    Attributes:
        n_in, n_out, scale, support: the axis' input size, output size, scale and support K.
        position: ``[n_out]`` float64, ``x(i)`` (snapped: ``x(i) - K/2`` is a multiple of ``SNAP``).
        start: ``[n_out]`` int64, ``j0(i)``, the first input index of output i's window (may be < 0 or
            reach past ``n_in - 1``: those taps are border taps).
        phase: ``[n_out]`` int64, the phase index of each output (first occurrence order).
        offsets: ``[P, K]`` float64, ``offsets[p, k] = k - K/2 + phi_p``, the tap offsets of phase p
            (input pixels, tap minus output position).
    """

    n_in: int
    n_out: int
    scale: float
    support: int
    position: np.ndarray
    start: np.ndarray
    phase: np.ndarray
    offsets: np.ndarray

    @property
    def phases(self) -> int:
        return int(self.offsets.shape[0])


@dataclass(frozen=True)
class CCGrid:
    """The 2-D grid: rows (``y``) and columns (``x``) are independent axes."""

    y: AxisGrid
    x: AxisGrid

    @property
    def phases(self) -> tuple[int, int]:
        """``(Py, Px)``: the weight tensor of cc_conv2d is ``[Py, Px, C_out, C_in, Kh, Kw]``."""
        return self.y.phases, self.x.phases

    @property
    def scale(self) -> tuple[float, float]:
        return self.y.scale, self.x.scale

    @property
    def out_size(self) -> tuple[int, int]:
        return self.y.n_out, self.x.n_out

    def tap_offsets(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
        """``[Py, Px, Kh, Kw, 2]`` offsets ``(dy, dx)`` of every tap of every (phase_y, phase_x) pair.

        This is where a continuous filter is evaluated: once per pair and tap, not per output pixel.
        """
        dy = torch.tensor(self.y.offsets, dtype=dtype, device=device)  # [Py, Kh]
        dx = torch.tensor(self.x.offsets, dtype=dtype, device=device)  # [Px, Kw]
        py, kh = dy.shape
        px, kw = dx.shape
        return torch.stack(
            (
                dy[:, None, :, None].expand(py, px, kh, kw),
                dx[None, :, None, :].expand(py, px, kh, kw),
            ),
            dim=-1,
        )


@functools.lru_cache(maxsize=512)
def axis_grid(n_in: int, n_out: int, scale: float, support: int) -> AxisGrid:
    """The grid of one axis (cached; see the module docstring for the equations)."""
    i = np.arange(n_out, dtype=np.float64)
    position = i / scale + ((n_in - 1) / 2 - (n_out - 1) / (2 * scale))  # [n_out]
    window_start = np.round((position - support / 2) / SNAP) * SNAP  # snapped x - K/2
    start = np.ceil(window_start)
    phi = start - window_start  # [n_out] in [0, 1), exact multiples of SNAP
    values, first = np.unique(phi, return_index=True)
    rank = np.empty(len(values), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(values))
    phase = rank[np.searchsorted(values, phi)]  # [n_out], first-occurrence order
    phase_values = values[np.argsort(first, kind="stable")]  # [P]
    offsets = np.arange(support, dtype=np.float64)[None, :] - support / 2 + phase_values[:, None]  # [P, K]
    for array in (window_start, start, phase, offsets):
        array.flags.writeable = False
    return AxisGrid(
        n_in=n_in,
        n_out=n_out,
        scale=scale,
        support=support,
        position=window_start + support / 2,
        start=start.astype(np.int64),
        phase=phase,
        offsets=offsets,
    )


def _pair(value: object, name: str, function: str) -> tuple[float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, Sequence) and len(value) == 2 and not isinstance(value, str):
        return float(value[0]), float(value[1])
    raise TypeError(f"{function}: argument '{name}' must be a number or a pair (height, width), got {value!r}")


def int_pair(value: object, name: str, function: str, minimum: int = 1) -> tuple[int, int]:
    """``(a, b)`` from an int ``n`` (``(n, n)``) or a pair of ints, each ``>= minimum``.

    A float (``3.5``), a bool or a sequence of another length is a TypeError; a value below
    ``minimum`` a ValueError, both naming ``function`` and ``name``.
    """
    check = ArgCheck(function)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            check.fail(name, f"must be an int or a pair of ints (height, width), got {value!r}", TypeError)
        pair = (value[0], value[1])
    else:
        pair = (value, value)
    if not all(is_integer(v) for v in pair):
        check.fail(name, f"must be an int or a pair of ints (height, width), got {value!r}", TypeError)
    a, b = int(pair[0]), int(pair[1])  # type: ignore[call-overload]
    for axis, n in (("height", a), ("width", b)):
        if n < minimum:
            where = f" for the {axis}" if isinstance(value, Sequence) else ""
            check.fail(name, f"must be >= {minimum}, got {n}{where}")
    return a, b


def _check_output_fits(sizes: tuple[int, int], name: str, function: str) -> None:
    """The smallest output of this grid (one float32 channel of ``sizes``) must fit in memory."""
    ArgCheck(function).allocation(sizes, torch.float32, torch.device("cpu"), name)


def resolve_output(
    in_size: tuple[int, int],
    size: Sequence[int] | int | None,
    scale: Sequence[float] | float | None,
    *,
    function: str = "vision_kernels.cc_conv2d",
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Output size and per-axis scale from ``size=(h, w)`` and/or ``scale=(sy, sx)``.

    * scale only: ``n_out = floor(n_in * s + 1e-6)`` (rounded down as ``F.interpolate`` does, with a
      tolerance so that 10 * 0.7 gives 7);
    * size only: ``s = n_out / n_in``;
    * both: both as given (the grid spacing is ``1 / s``, the output has ``size`` pixels, still centred);
    * neither: scale 1, same size (an ordinary "same" convolution).

    Raises ValueError for non-positive or non-finite scales, sizes below 1, or a scale that gives an
    empty output.
    """
    if scale is None and size is None:
        return (int(in_size[0]), int(in_size[1])), (1.0, 1.0)
    scales: tuple[float, float] | None = None
    if scale is not None:
        scales = _pair(scale, "scale", function)
        for axis, s in zip(("height", "width"), scales, strict=True):
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"{function}: argument 'scale' must be finite and > 0, got {s} for the {axis}")
    if size is not None:
        sizes = int_pair(size, "size", function, minimum=1)
        _check_output_fits(sizes, "size", function)
        if scales is None:
            scales = (sizes[0] / in_size[0], sizes[1] / in_size[1]) if min(in_size) > 0 else (1.0, 1.0)
        return sizes, scales
    assert scales is not None
    out = []
    for axis, n_in, s in zip(("height", "width"), in_size, scales, strict=True):
        if not n_in * s < 2.0**62:
            ArgCheck(function).fail("scale", f"gives an output of {n_in * s:.3g} pixels for the {axis}, too large")
        n_out = math.floor(n_in * s + 1e-6)
        if n_out < 1 and n_in > 0:
            raise ValueError(
                f"{function}: argument 'scale' gives an empty output: {n_in} input pixels x scale {s} "
                f"< 1 pixel for the {axis}"
            )
        out.append(n_out)
    _check_output_fits((out[0], out[1]), "scale", function)
    return (out[0], out[1]), scales


def check_support(support: tuple[int, int], scale: tuple[float, float], function: str, name: str = "support") -> None:
    """Every input pixel must fall in some output's window: ``K * s >= 1`` per axis (and ``K >= 1``).

    The windows of consecutive outputs are ``1 / s`` input pixels apart and ``K`` wide, so a smaller
    support skips input pixels entirely (a strided 1x1 convolution at stride 2 drops 3 of 4 pixels).
    """
    for axis, k, s in zip(("height", "width"), support, scale, strict=True):
        if k < 1:
            raise ValueError(f"{function}: argument '{name}' must be >= 1, got {k} for the {axis}")
        if k * s < 1 - 1e-9:
            raise ValueError(
                f"{function}: argument '{name}' is too small for the scale: support {k} x scale {s} < 1 "
                f"for the {axis}, so some input pixels would be in no output's window; use a support "
                f">= {math.ceil(1 / s - 1e-9)}"
            )


def cc_conv2d_grid(
    in_size: tuple[int, int],
    support: int | tuple[int, int],
    *,
    size: Sequence[int] | int | None = None,
    scale: Sequence[float] | float | None = None,
) -> CCGrid:
    """The grid of a cc_conv2d call: output size, scales, phases and tap offsets of both axes.

    Args:
        in_size: ``(H, W)`` of the input.
        support: ``K`` or ``(Kh, Kw)``, the filter's support in input pixels.
        size, scale: as for :func:`vision_kernels.ops.cc_conv2d` (see :func:`resolve_output`).

    Returns:
        A :class:`CCGrid`; ``grid.phases`` is ``(Py, Px)`` and ``grid.tap_offsets()`` the
        ``[Py, Px, Kh, Kw, 2]`` points at which to evaluate a continuous filter.

    Raises:
        TypeError: ``in_size``, ``support`` or ``size`` not an int or a pair of ints (e.g. ``3.5``).
        ValueError: sizes or support below 1, scales not finite and > 0, a support too small for the
            scale, or an output that cannot fit in memory (checked before anything is allocated).
    """
    function = "vision_kernels.cc_conv2d_grid"
    in_size = int_pair(in_size, "in_size", function, minimum=1)
    kh, kw = int_pair(support, "support", function, minimum=1)
    out_size, scales = resolve_output(in_size, size, scale, function=function)
    check_support((kh, kw), scales, function)
    return CCGrid(
        y=axis_grid(int(in_size[0]), out_size[0], scales[0], kh),
        x=axis_grid(int(in_size[1]), out_size[1], scales[1], kw),
    )


# ---------------------------------------------------------------- kernel plans


@dataclass(frozen=True)
class AxisPlan:
    """Integer tables of one axis, as the kernels read them (all int64, contiguous, on CPU).

    Attributes:
        taps: ``[n_out, T]`` input index read by tap t of output i, ``-1`` for a zero (padding) tap.
        group: ``[n_out]`` the weight group (slice of the weight tensor) output i uses.
        order: ``[n_out]`` the outputs sorted by group (stable).
        offsets: ``[G + 1]`` outputs of group g are ``order[offsets[g]:offsets[g + 1]]``.
        pairs: ``[G, T, 2]`` for input-gradient plans only: (phase, tap) of the forward weight that
            each (group, tap) uses, ``(-1, -1)`` for padding taps; ``None`` for forward plans.
    """

    taps: Tensor
    group: Tensor
    order: Tensor
    offsets: Tensor
    pairs: Tensor | None = None

    @property
    def groups(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def taps_per_output(self) -> int:
        return int(self.taps.shape[1])

    def tensors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(taps, group, order, offsets)`` on ``device`` (cached per device)."""
        return _plan_on_device(self, str(device))[:4]  # type: ignore[return-value]

    def pairs_on(self, device: torch.device) -> Tensor | None:
        """``pairs`` on ``device`` (cached per device), None for a forward plan."""
        return _plan_on_device(self, str(device))[4]


@functools.lru_cache(maxsize=256)
def _plan_on_device(plan: AxisPlan, device: str) -> tuple[Tensor | None, ...]:
    tables = (plan.taps, plan.group, plan.order, plan.offsets, plan.pairs)
    return tuple(None if t is None else t.to(device) for t in tables)


def _sorted_plan(taps: np.ndarray, group: np.ndarray, groups: int, pairs: np.ndarray | None) -> AxisPlan:
    order = np.argsort(group, kind="stable")
    offsets = np.zeros(groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(group, minlength=groups), out=offsets[1:])
    as_tensor = functools.partial(torch.tensor, dtype=torch.int64)
    # Plans are cached constants: build real tensors even when a fake kernel (torch.compile's
    # FakeTensorMode) asks first, or the cache would hand fake tensors to the real kernel later.
    with unset_fake_temporarily():
        return AxisPlan(
            taps=as_tensor(taps.reshape(len(group), -1)),
            group=as_tensor(group),
            order=as_tensor(order),
            offsets=as_tensor(offsets),
            pairs=None if pairs is None else as_tensor(pairs),
        )


def _border(index: np.ndarray, n_in: int, padding_mode: str) -> np.ndarray:
    if padding_mode == "replicate":
        return np.clip(index, 0, n_in - 1)
    return np.where((index >= 0) & (index < n_in), index, -1)


@functools.lru_cache(maxsize=256)
def forward_plan(n_in: int, n_out: int, scale: float, support: int, padding_mode: str) -> AxisPlan:
    """Forward tables: output i reads ``start(i) + t`` (border rule applied), weight group = phase."""
    grid = axis_grid(n_in, n_out, scale, support)
    taps = _border(grid.start[:, None] + np.arange(support)[None, :], n_in, padding_mode)  # [n_out, K]
    return _sorted_plan(taps, grid.phase, grid.phases, None)


@functools.lru_cache(maxsize=256)
def input_grad_plan(n_in: int, n_out: int, scale: float, support: int, padding_mode: str) -> AxisPlan:
    """Transposed tables for the gradient to the input.

    Input index y receives from every (output i, tap t) with ``taps[i, t] == y``. Its pairs are sorted
    by (phase(i), t, i); inputs whose (phase, t) sequences are equal form a group (they share
    weights), and ``pairs[g, a] = (phase, t)`` names the forward weight slice of pair a. Rows with
    fewer pairs than the widest group are padded with ``-1`` taps (zero input, zero weight).
    """
    forward = forward_plan(n_in, n_out, scale, support, padding_mode)
    taps = forward.taps.numpy()  # [n_out, K]
    phase = forward.group.numpy()  # [n_out]
    received: list[list[tuple[int, int, int]]] = [[] for _ in range(n_in)]
    for i, t in zip(*np.nonzero(taps >= 0), strict=True):
        received[taps[i, t]].append((int(phase[i]), int(t), int(i)))
    width = max((len(r) for r in received), default=0)
    width = max(width, 1)
    signatures: dict[tuple[tuple[int, int], ...], int] = {}
    rtaps = np.full((n_in, width), -1, dtype=np.int64)
    rgroup = np.zeros(n_in, dtype=np.int64)
    for y, pairs in enumerate(received):
        pairs.sort()
        key = tuple((p, t) for p, t, _ in pairs)
        rgroup[y] = signatures.setdefault(key, len(signatures))
        rtaps[y, : len(pairs)] = [i for _, _, i in pairs]
    table = np.full((max(len(signatures), 1), width, 2), -1, dtype=np.int64)
    for key, g in signatures.items():
        if key:
            table[g, : len(key)] = key
    return _sorted_plan(rtaps, rgroup, max(len(signatures), 1), table)
