"""Fused attention decomposition of a ViT's class token (Gandelsman et al., ICLR 2024).

For image b, layer l, head h and source token i::

    term[b, l, h, i, :] = scale[b] * attn[b, l, h, i] * (values[b, l, i, h, :] @ folded[l, h]) + offset[b, l, :]

    values [B, L, N, H, Dh]  v = W_V^h ln_1(x_i) + b_V^h          attn   [B, L, H, N]  class-token rows
    folded [L, H, Dh, E]     W_O^h^T diag(LayerScale) C diag(gamma) proj (C centres a term)
    scale  [B]               1 / std(r_b)                          offset [B, L, E]   optional

With ``folded``, ``scale`` and ``offset`` built by :mod:`vision_kernels.clip`, the terms are the
direct contributions of every (layer, head, source token) to the image embedding through the
linearized final LayerNorm. The caller keeps the axes it needs: the result is
``[B, Lk, Hk, Nk, E]`` with ``Lk = len(layers)`` (or 1: summed over the listed layers),
``Hk = H`` (or 1) and ``Nk = N`` (or 1); the offset counts once per summed term. Only that
output is allocated: no ``[N, N, H, D]`` or ``[B, L, N, H, width]`` temporary exists.

Accumulation is float32 (float64 for float64 inputs); ``out_dtype`` may be float32, float64,
float16 or bfloat16 independently of the input dtype. Gradients flow to values, attn, folded,
scale and offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import ArgCheck
from ._declare import Native, Target, declare
from ._interop import accepts_arrays

__all__ = ["attention_decomposition"]

FUNCTION = "vision_kernels.attention_decomposition"
MAX_LAYERS = 256  # kMaxSelectedLayers in csrc/attention_decomp/attention_decomp.h


@declare("vision_kernels::attention_decomposition")
def _attention_decomposition_op(
    target: Target,
    values: Tensor,
    attn: Tensor,
    folded: Tensor,
    scale: Tensor,
    offset: Tensor | None,
    layers: list[int],
    keep_layers: bool,
    keep_heads: bool,
    keep_tokens: bool,
    out_dtype: torch.dtype | None,
    check_finite: bool,
) -> Native[Tensor]:
    """Check the inputs and allocate the output ``[B, Lk, Hk, Nk, E]``; native arguments as the op's."""
    check = ArgCheck(FUNCTION)
    check.rank(values, "values", 5, "[B, L, N, H, Dh]")
    check.rank(attn, "attn", 4, "[B, L, H, N]")
    check.rank(folded, "folded", 4, "[L, H, Dh, E]")
    check.rank(scale, "scale", 1, "[B]")
    check.floating(values, "values")
    for tensor, name in ((attn, "attn"), (folded, "folded"), (scale, "scale")):
        check.same_dtype(values, "values", tensor, name)
    batch, num_layers, tokens, heads, head_dim = values.shape
    check.size(attn, "attn", 0, batch, "B, the batch of values")
    check.size(attn, "attn", 1, num_layers, "L, the layers of values")
    check.size(attn, "attn", 2, heads, "H, the heads of values")
    check.size(attn, "attn", 3, tokens, "N, the tokens of values")
    check.size(folded, "folded", 0, num_layers, "L, the layers of values")
    check.size(folded, "folded", 1, heads, "H, the heads of values")
    check.size(folded, "folded", 2, head_dim, "Dh, the head size of values")
    check.size(scale, "scale", 0, batch, "B, the batch of values")
    named = [("values", values), ("attn", attn), ("folded", folded), ("scale", scale)]
    if offset is not None:
        check.rank(offset, "offset", 3, "[B, L, E]")
        check.same_dtype(values, "values", offset, "offset")
        check.size(offset, "offset", 0, batch, "B, the batch of values")
        check.size(offset, "offset", 1, num_layers, "L, the layers of values")
        check.size(offset, "offset", 2, folded.shape[3], "E, the embedding size of folded")
        named.append(("offset", offset))
    check.layer_indices(layers, "layers", num_layers, MAX_LAYERS)
    check.out_dtype(out_dtype)
    if check_finite and target.real:
        check.all_finite(named)
    shape = (
        batch,
        len(layers) if keep_layers else 1,
        heads if keep_heads else 1,
        tokens if keep_tokens else 1,
        folded.shape[3],
    )
    out = values.new_empty(shape, dtype=out_dtype or values.dtype)  # [B, Lk, Hk, Nk, E]
    return Native(out, args=(values, attn, folded, scale, offset, layers, keep_layers, keep_heads, keep_tokens, out))


# The autograd context is torch's dynamic per-call object: it carries torch's own fields
# (saved_tensors, needs_input_grad) and the attributes _setup_context stores on it, so it is Any.


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    values, attn, folded, scale, offset, layers, keep_layers, keep_heads, keep_tokens, _, _ = inputs
    ctx.save_for_backward(values, attn, folded, scale)
    ctx.has_offset = offset is not None
    ctx.offset_shape = None if offset is None else tuple(offset.shape)
    ctx.layers = list(layers)
    ctx.keep = (keep_layers, keep_heads, keep_tokens)


def _backward(ctx: Any, grad: Tensor) -> tuple:
    """Gradients of ``out = sum_group scale A (v @ M) + count * offset`` (plain torch; memory O(B S H N Dh))."""
    values, attn, folded, scale = ctx.saved_tensors
    accumulate = torch.float64 if values.dtype == torch.float64 else torch.float32
    index = torch.tensor(ctx.layers, dtype=torch.long, device=values.device)
    keep_layers, keep_heads, keep_tokens = ctx.keep
    g = grad.to(accumulate)  # [B, Lk, Hk, Nk, E]
    if not keep_layers:
        g = g.expand(-1, len(ctx.layers), -1, -1, -1)  # [B, S, Hk, Nk, E]
    v = values.to(accumulate).index_select(1, index).permute(0, 1, 3, 2, 4)  # [B, S, H, N, Dh]
    a = attn.to(accumulate).index_select(1, index)  # [B, S, H, N]
    m = folded.to(accumulate).index_select(0, index)  # [S, H, Dh, E]
    s = scale.to(accumulate)[:, None, None, None]  # [B, 1, 1, 1]
    back = g @ m.transpose(-1, -2)  # [B, S, H, Nk, Dh]: dL/d(v @ M) pulled back through M
    grads: list[Tensor | None] = [None] * 11
    if ctx.needs_input_grad[0]:
        grad_v = (s * a)[..., None] * back  # [B, S, H, N, Dh]
        full = torch.zeros(values.shape, dtype=accumulate, device=values.device)  # [B, L, N, H, Dh]
        grads[0] = full.index_add_(1, index, grad_v.permute(0, 1, 3, 2, 4)).to(values.dtype)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
        projected = (v * back).sum(-1)  # [B, S, H, N]: (v @ M) . g
        if ctx.needs_input_grad[1]:
            full = torch.zeros(attn.shape, dtype=accumulate, device=attn.device)
            grads[1] = full.index_add_(1, index, s * projected).to(attn.dtype)
        if ctx.needs_input_grad[3]:
            grads[3] = (a * projected).sum(dim=(1, 2, 3)).to(scale.dtype)
    if ctx.needs_input_grad[2]:
        weighted = (s * a)[..., None] * v  # [B, S, H, N, Dh]
        if not keep_tokens:
            weighted = weighted.sum(3, keepdim=True)  # [B, S, H, 1, Dh]
        grad_m = (weighted.transpose(-1, -2) @ g).sum(0)  # [S, H, Dh, E]
        full = torch.zeros(folded.shape, dtype=accumulate, device=folded.device)
        grads[2] = full.index_add_(0, index, grad_m).to(folded.dtype)
    if ctx.has_offset and ctx.needs_input_grad[4]:
        heads, tokens = values.shape[3], values.shape[2]
        count = (1 if keep_heads else heads) * (1 if keep_tokens else tokens)  # terms per layer in an output
        per_layer = g.sum(dim=(2, 3)) * count  # [B, S, E]
        full = torch.zeros(ctx.offset_shape, dtype=accumulate, device=values.device)
        grads[4] = full.index_add_(1, index, per_layer).to(values.dtype)
    return tuple(grads)


_attention_decomposition_op.register_autograd(_backward, setup_context=_setup_context)


@accepts_arrays("values", "attn", "folded", "scale", "offset")
def attention_decomposition(
    values: Tensor,
    attn: Tensor,
    folded: Tensor,
    scale: Tensor,
    offset: Tensor | None = None,
    layers: Sequence[int] | None = None,
    *,
    keep_layers: bool = True,
    keep_heads: bool = True,
    keep_tokens: bool = True,
    out_dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Direct contributions of every (layer, head, source token) to a ViT's class-token embedding.

    ``out[b, s, h, i] = scale[b] * attn[b, l_s, h, i] * (values[b, l_s, i, h] @ folded[l_s, h]) + offset[b, l_s]``
    for ``l_s = layers[s]``, summed over the axes not kept.

    Args:
        values: ``[B, L, N, H, Dh]`` per-layer value vectors of every token (any strides, e.g. a
            view of ``[B, L, N, width]``); float32, float64, float16 or bfloat16.
        attn: ``[B, L, H, N]`` class-token attention rows, same dtype and device.
        folded: ``[L, H, Dh, E]`` folded per-head matrices (see
            :func:`vision_kernels.clip.folded_head_matrices`).
        scale: ``[B]`` per-image factor (``1 / std`` of the final residual, ``/ |z|`` to normalize).
        offset: optional ``[B, L, E]`` vector added to every term of layer l (stride-0 allowed).
        layers: layer indices to decompose (default: all, in order). Repeats are allowed.
        keep_layers: keep one entry per listed layer, else sum over them.
        keep_heads: keep the head axis, else sum over heads.
        keep_tokens: keep the source-token axis, else sum over tokens.
        out_dtype: float32, float64, float16 or bfloat16 output (default: the input dtype).
        check_finite: raise ValueError if an input holds NaN or Inf.

    Returns:
        ``[B, Lk, Hk, Nk, E]`` with ``Lk = len(layers) or 1``, ``Hk = H or 1``, ``Nk = N or 1``.
        Differentiable in values, attn, folded, scale and offset.

    Raises:
        ValueError, TypeError naming the argument for bad shapes, dtypes or devices; IndexError
        for a layer index out of range.
    """
    check = ArgCheck(FUNCTION)
    for tensor, name in ((values, "values"), (attn, "attn"), (folded, "folded"), (scale, "scale")):
        check.tensor(tensor, name)
    if offset is not None:
        check.tensor(offset, "offset")
    if layers is None:
        layer_list = list(range(values.shape[1])) if values.dim() == 5 else []
    else:
        layer_list = check.integers(layers, "layers")  # [1.7] or [True] is a TypeError, not layer 1
    check.out_dtype(out_dtype)
    return _attention_decomposition_op(
        values, attn, folded, scale, offset, layer_list, keep_layers, keep_heads, keep_tokens, out_dtype, check_finite
    )
