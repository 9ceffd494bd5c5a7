"""Plain-PyTorch ground truth for vision_kernels.ops.cc_conv (unfold-based, docs/DESIGN.md 2.4).

The grid is recomputed here from its equation (not taken from the op's plan code), the border rule
is applied by padding the input (``F.pad`` with zeros or edge replication), every window is cut out
with ``F.unfold``, the window of each output pixel is selected, and each (phase_y, phase_x) group of
output pixels is multiplied by its weight matrix. Autograd differentiates all of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SNAP = 2.0**-20


def axis_phases(n_in: int, n_out: int, scale: float, support: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(start [n_out], phase [n_out], offsets [P, K])`` of one axis, from the grid equation.

    ``x(i) = i / s + (n_in - 1) / 2 - (n_out - 1) / (2 s)``; the window start ``x(i) - K/2`` is snapped
    to a multiple of 2^-20, ``start = ceil``, ``phi = start - (x - K/2)``; phases are the distinct
    ``phi`` values in order of first occurrence.
    """
    i = torch.arange(n_out, dtype=torch.float64)
    x = i / scale + ((n_in - 1) / 2 - (n_out - 1) / (2 * scale))
    window_start = torch.round((x - support / 2) / SNAP) * SNAP
    start = torch.ceil(window_start)
    phi = start - window_start
    seen: dict[float, int] = {}
    phase = torch.tensor([seen.setdefault(float(v), len(seen)) for v in phi], dtype=torch.int64)
    values = torch.tensor(list(seen), dtype=torch.float64)
    offsets = torch.arange(support, dtype=torch.float64)[None, :] - support / 2 + values[:, None]
    return start.long(), phase, offsets


def cc_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    size: tuple[int, int],
    scale: tuple[float, float],
    padding_mode: str = "zeros",
) -> Tensor:
    """Continuous convolution by unfold + matmul per phase group:

    ``out[b, o, i, j] = bias[o] + sum_{c,ky,kx} weight[py(i), px(j), o, c, ky, kx] * in[b, c, y0(i) + ky, x0(j) + kx]``
    with ``y0(i)`` the first row of output i's window and ``py(i)`` its phase (columns likewise).

    ``input [B, C, H, W]``, ``weight [Py, Px, O, C, Kh, Kw]``, ``bias [O]`` or None, ``size=(H', W')``,
    ``scale=(sy, sx)``; pixels outside the input read zero (``"zeros"``) or the edge (``"replicate"``).
    Computed in the input's dtype by unfold + matmul; returns ``[B, O, H', W']``.
    """
    batch, channels, height, width = input.shape
    phases_y, phases_x, out_channels, _, kh, kw = weight.shape
    start_y, phase_y, _ = axis_phases(height, size[0], scale[0], kh)
    start_x, phase_x, _ = axis_phases(width, size[1], scale[1], kw)
    assert int(phase_y.max()) + 1 == phases_y and int(phase_x.max()) + 1 == phases_x, "weight phases mismatch"
    top, left = max(0, -int(start_y.min())), max(0, -int(start_x.min()))
    bottom = max(0, int(start_y.max()) + kh - height)
    right = max(0, int(start_x.max()) + kw - width)
    mode = "constant" if padding_mode == "zeros" else "replicate"
    padded = F.pad(input, (left, right, top, bottom), mode=mode)  # [B, C, H + top + bottom, W + left + right]
    windows = F.unfold(padded, (kh, kw))  # [B, C * kh * kw, Ly * Lx], every window start
    lx = padded.shape[-1] - kw + 1
    column = ((start_y + top)[:, None] * lx + (start_x + left)[None, :]).reshape(-1)  # [H' * W']
    columns = windows[:, :, column]  # [B, C * kh * kw, H' * W']
    group = (phase_y[:, None] * phases_x + phase_x[None, :]).reshape(-1)  # [H' * W']
    matrices = weight.reshape(phases_y * phases_x, out_channels, channels * kh * kw)  # [G, O, C * kh * kw]
    out = input.new_zeros(batch, out_channels, size[0] * size[1])
    for g in range(phases_y * phases_x):
        pixels = torch.nonzero(group == g).flatten().to(input.device)  # the phase tables are built on the CPU
        out = out.index_copy(2, pixels, matrices[g] @ columns[:, :, pixels])
    if bias is not None:
        out = out + bias[None, :, None]
    return out.view(batch, out_channels, size[0], size[1])


def strided_shift(layers: int) -> float:
    """Shift, in input pixels, of a stack of ``layers`` 3x3 / stride 2 / padding 1 convolutions.

    Output k of such a layer is centred on input 2k, while the centred grid of a 2x downscale puts it at
    2k + 1/2: each layer moves content by half of its input pixel, i.e. ``2**l / 2`` original pixels at
    layer l, ``(2**layers - 1) / 2`` in total.
    """
    return (math.pow(2, layers) - 1) / 2
