"""Second-order effects of MLP neurons through later attention heads (Gandelsman, Efros, Steinhardt, 2024), factorized.

For image b, neuron n and later (layer, head) pair p = (l_s, h)::

    coef[b, p, n] = scale[b] * sum_t attn[b, l_s, h, t] / ln_std[b, l_s, t] * activations[b, t, n]
    out[b, n, :]  = sum_p coef[b, p, n] * directions[s, h, n, :] + offset[b, :]

    attn        [B, L, H, N]   class-token attention rows A[l, h, 0, :]     ln_std [B, L, N]  std of ln_1's input
    activations [B, N, Nn]     the neurons' activations at every token       scale  [B]        1 / std(r) (/ |z|)
    directions  [S, H, Nn, E]  (W_V^h diag(gamma_1) C w_n) @ M[l_s, h]        offset [B, E]     optional

With ``directions``, ``scale`` and ``offset`` built by :func:`vision_kernels.clip.neuron_effects`, ``out`` is
the second-order effect of every neuron on the image embedding: what the neuron writes into the residual
stream, carried by the values of the heads of the later layers ``layers`` (attention weights fixed, every
LayerNorm linearized at the forward pass's statistics). The per-image coefficients are a small
``[P, N] x [N, Nn]`` product; the directions are image independent, so the work per image is
``P x Nn x E`` multiply-adds and nothing of size ``N x Nn x width`` (the direct definition) is ever formed.

Accumulation is float32 (float64 for float64 inputs); ``out_dtype`` may be float32, float64, float16 or
bfloat16 independently of the inputs' dtype. Gradients flow to every tensor input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import ArgCheck
from ._declare import Native, Target, declare
from ._interop import accepts_arrays

__all__ = ["second_order_effects"]

FUNCTION = "vision_kernels.second_order_effects"
MAX_LAYERS = 256  # kMaxLayers in csrc/second_order/second_order.h


@declare("vision_kernels::second_order_effects")
def _second_order_op(
    target: Target,
    attn: Tensor,
    ln_std: Tensor,
    activations: Tensor,
    directions: Tensor,
    scale: Tensor,
    offset: Tensor | None,
    layers: list[int],
    out_dtype: torch.dtype | None,
    check_finite: bool,
) -> Native[Tensor]:
    """Check the inputs and allocate the output ``[B, Nn, E]`` (and, for CUDA, the coefficients ``[B, P, Nn]``)."""
    check = ArgCheck(FUNCTION)
    check.rank(attn, "attn", 4, "[B, L, H, N]")
    check.rank(ln_std, "ln_std", 3, "[B, L, N]")
    check.rank(activations, "activations", 3, "[B, N, Nn]")
    check.rank(directions, "directions", 4, "[S, H, Nn, E]")
    check.rank(scale, "scale", 1, "[B]")
    check.floating(attn, "attn")
    named = [("attn", attn), ("ln_std", ln_std), ("activations", activations), ("directions", directions)]
    named.append(("scale", scale))
    for name, tensor in named[1:]:
        check.same_dtype(attn, "attn", tensor, name)
    batch, num_layers, heads, tokens = attn.shape
    check.size(ln_std, "ln_std", 0, batch, "B, the batch of attn")
    check.size(ln_std, "ln_std", 1, num_layers, "L, the layers of attn")
    check.size(ln_std, "ln_std", 2, tokens, "N, the tokens of attn")
    check.size(activations, "activations", 0, batch, "B, the batch of attn")
    check.size(activations, "activations", 1, tokens, "N, the tokens of attn")
    check.size(directions, "directions", 0, len(layers), "S, the number of listed layers")
    check.size(directions, "directions", 1, heads, "H, the heads of attn")
    check.size(directions, "directions", 2, activations.shape[2], "Nn, the neurons of activations")
    check.size(scale, "scale", 0, batch, "B, the batch of attn")
    if offset is not None:
        check.rank(offset, "offset", 2, "[B, E]")
        check.same_dtype(attn, "attn", offset, "offset")
        check.size(offset, "offset", 0, batch, "B, the batch of attn")
        check.size(offset, "offset", 1, directions.shape[3], "E, the embedding size of directions")
        named.append(("offset", offset))
    check.layer_indices(layers, "layers", num_layers, MAX_LAYERS)
    check.out_dtype(out_dtype)
    if check_finite and target.real:
        check.all_finite(named)
        if ln_std.numel() and not bool((ln_std > 0).all()):
            position = tuple(int(i) for i in (ln_std <= 0).nonzero()[0].tolist())
            check.fail(
                "ln_std", f"must be > 0 (a LayerNorm's sqrt(var + eps)), got {ln_std[position].item()} at {position}"
            )
    neurons = activations.shape[2]
    out = attn.new_empty((batch, neurons, directions.shape[3]), dtype=out_dtype or attn.dtype)  # [B, Nn, E]
    workspace: tuple[Tensor, ...] = ()
    if target.cuda_source:
        accumulate = torch.float64 if attn.dtype == torch.float64 else torch.float32
        workspace = (attn.new_empty((batch, len(layers) * heads, neurons), dtype=accumulate),)  # [B, P, Nn]
    return Native(out, args=(attn, ln_std, activations, directions, scale, offset, layers, out), workspace=workspace)


# The autograd context is torch's dynamic per-call object: it carries torch's own fields
# (saved_tensors, needs_input_grad) and the attributes _setup_context stores on it, so it is Any.


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    attn, ln_std, activations, directions, scale, offset, layers, _, _ = inputs
    ctx.save_for_backward(attn, ln_std, activations, directions, scale)
    ctx.has_offset = offset is not None
    ctx.layers = list(layers)


def _backward(ctx: Any, grad: Tensor) -> tuple:
    """Gradients of ``out = sum_p coef[p] directions[p] + offset`` with ``coef = scale sum_t A / std act`` (torch)."""
    attn, ln_std, activations, directions, scale = ctx.saved_tensors
    accumulate = torch.float64 if attn.dtype == torch.float64 else torch.float32
    index = torch.tensor(ctx.layers, dtype=torch.long, device=attn.device)
    g = grad.to(accumulate)  # [B, Nn, E]
    a = attn.to(accumulate).index_select(1, index)  # [B, S, H, N]
    std = ln_std.to(accumulate).index_select(1, index)[:, :, None, :]  # [B, S, 1, N]
    act = activations.to(accumulate)  # [B, N, Nn]
    d = directions.to(accumulate)  # [S, H, Nn, E]
    s = scale.to(accumulate)  # [B]
    ratio = a / std  # [B, S, H, N]
    unscaled = torch.einsum("bshn,bnk->bshk", ratio, act)  # [B, S, H, Nn]: coef / scale
    pulled = torch.einsum("bke,shke->bshk", g, d)  # [B, S, H, Nn]: g . directions
    grad_coef = pulled * s[:, None, None, None]  # [B, S, H, Nn]
    grads: list[Tensor | None] = [None] * 9
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_ratio = torch.einsum("bshk,bnk->bshn", grad_coef, act)  # [B, S, H, N]
        if ctx.needs_input_grad[0]:
            full = torch.zeros(attn.shape, dtype=accumulate, device=attn.device)
            grads[0] = full.index_add_(1, index, grad_ratio / std).to(attn.dtype)
        if ctx.needs_input_grad[1]:
            grad_std = -(grad_ratio * ratio / std).sum(2)  # [B, S, N]
            full = torch.zeros(ln_std.shape, dtype=accumulate, device=attn.device)
            grads[1] = full.index_add_(1, index, grad_std).to(ln_std.dtype)
    if ctx.needs_input_grad[2]:
        grads[2] = torch.einsum("bshk,bshn->bnk", grad_coef, ratio).to(activations.dtype)
    if ctx.needs_input_grad[3]:
        grads[3] = torch.einsum("bshk,bke->shke", unscaled * s[:, None, None, None], g).to(directions.dtype)
    if ctx.needs_input_grad[4]:
        grads[4] = (unscaled * pulled).sum(dim=(1, 2, 3)).to(scale.dtype)
    if ctx.has_offset and ctx.needs_input_grad[5]:
        grads[5] = g.sum(1).to(attn.dtype)
    return tuple(grads)


_second_order_op.register_autograd(_backward, setup_context=_setup_context)


@accepts_arrays("attn", "ln_std", "activations", "directions", "scale", "offset")
def second_order_effects(
    attn: Tensor,
    ln_std: Tensor,
    activations: Tensor,
    directions: Tensor,
    scale: Tensor,
    offset: Tensor | None = None,
    layers: Sequence[int] | None = None,
    *,
    out_dtype: torch.dtype | None = None,
    check_finite: bool = True,
) -> Tensor:
    """Factorized second-order effects of MLP neurons: per-image coefficients times (layer, head, neuron) directions.

    ``out[b, n] = sum_(s, h) scale[b] (sum_t attn[b, l_s, h, t] / ln_std[b, l_s, t] * activations[b, t, n])
    * directions[s, h, n] + offset[b]`` for ``l_s = layers[s]``.

    Args:
        attn: ``[B, L, H, N]`` class-token attention rows of every layer; float32, float64, float16 or bfloat16.
        ln_std: ``[B, L, N]`` ``sqrt(var + eps)`` of the residual stream entering each layer's ``ln_1`` (> 0).
        activations: ``[B, N, Nn]`` the neurons' activations at every token (any strides, e.g. a column subset).
        directions: ``[S, H, Nn, E]`` image-independent directions, one per listed layer, head and neuron
            (see :func:`vision_kernels.clip.neuron_directions`).
        scale: ``[B]`` per-image factor (``1 / std`` of the final residual, ``/ |z|`` to normalize).
        offset: optional ``[B, E]`` vector added to every neuron's effect.
        layers: the S later layers whose heads carry the effect (default: all L, in order). Repeats allowed.
        out_dtype: float32, float64, float16 or bfloat16 output (default: the inputs' dtype).
        check_finite: raise ValueError if an input holds NaN or Inf, or ``ln_std`` a value <= 0.

    Returns:
        ``[B, Nn, E]``, differentiable in every tensor input.

    Raises:
        ValueError, TypeError naming the argument for bad shapes, dtypes or devices; IndexError for a layer
        index out of range.
    """
    check = ArgCheck(FUNCTION)
    named = [("attn", attn), ("ln_std", ln_std), ("activations", activations), ("directions", directions)]
    for name, tensor in named + [("scale", scale)]:
        check.tensor(tensor, name)
    if offset is not None:
        check.tensor(offset, "offset")
    if layers is None:
        layer_list = list(range(attn.shape[1])) if attn.dim() == 4 else []
    else:
        layer_list = check.integers(layers, "layers")  # [1.7] or [True] is a TypeError, not layer 1
    check.out_dtype(out_dtype)
    return _second_order_op(attn, ln_std, activations, directions, scale, offset, layer_list, out_dtype, check_finite)
