"""Plain-PyTorch ground truth for vision_kernels.ops.second_order and the neuron analyses of vision_kernels.clip.

Two references:

* :func:`second_order_effects`: the op's equation with ``einsum`` (coefficients ``[B, S, H, Nn]`` first,
  then their product with the directions).
* :func:`direct_second_order_effects`: the second-order effect of MLP neurons computed from its
  definition on an open_clip / transformers CLIP model, without any folding or factorization. For every
  image, later layer and head it materializes the neuron's write at every token in width space
  ``[N, Nn, W]``, pushes it through the layer's ``ln_1`` linearized at the forward pass's statistics, the
  model's own value projection (``block.qkv``), the class-token attention row, the model's own output
  projection (``block.project``, with LayerScale and head scale), the final LayerNorm linearized at the
  statistics of the final residual, and the projection. It is the benchmark baseline and an independent
  check of :func:`vision_kernels.clip.neuron_effects` (same numbers, none of its algebra).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._precision import accumulation_dtype
from .clip_forward import ForwardRecord, forward_record


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
) -> Tensor:
    """``out[b, n] = sum_(s,h) coef[b, s, h, n] directions[s, h, n] + offset[b]`` with
    ``coef[b, s, h, n] = scale[b] sum_t attn[b, l_s, h, t] / ln_std[b, l_s, t] * activations[b, t, n]``.

    Returns ``[B, Nn, E]``, computed in float32 (float64 for float64 inputs), in ``out_dtype`` (default:
    the input dtype).
    """
    accumulate = accumulation_dtype(attn.dtype)
    layer_list = list(range(attn.shape[1])) if layers is None else list(layers)
    index = torch.tensor(layer_list, dtype=torch.long, device=attn.device)
    a = attn.to(accumulate).index_select(1, index)  # [B, S, H, N]
    std = ln_std.to(accumulate).index_select(1, index)  # [B, S, N]
    weights = a / std[:, :, None, :] * scale.to(accumulate)[:, None, None, None]  # [B, S, H, N]
    coefficients = torch.einsum("bshn,bnk->bshk", weights, activations.to(accumulate))  # [B, S, H, Nn]
    out = torch.einsum("bshk,shke->bke", coefficients, directions.to(accumulate))  # [B, Nn, E]
    if offset is not None:
        out = out + offset.to(accumulate)[:, None, :]
    return out.to(out_dtype or attn.dtype)


@torch.no_grad()
def direct_second_order_effects(
    model: torch.nn.Module,
    images: Tensor,
    layer: int,
    neurons: Sequence[int] | None = None,
    *,
    later_layers: Sequence[int] | None = None,
    convention: str = "per_term",
    normalize: bool = True,
) -> Tensor:
    """Second-order effects ``[B, Nn, E]`` of the neurons of MLP ``layer`` through the heads of ``later_layers``.

    For neuron ``n`` writing ``m[t] = act[t, n] * ls_2 * W_out[:, n]`` at token ``t``, and each later layer ``l``:

    * ``per_term``: ``y[t] = gamma_1 * (m[t] - mean(m[t])) / std_1[l, t]``; the head outputs
      ``x = ls_1 * W_O (sum_t A[l, :, 0, t] W_V y[t])`` without biases; the effect adds
      ``gamma_f * (x - mean(x)) / std_f @ proj``.
    * ``even_split`` (the original code): ``m[t]`` also carries ``ls_2 * b_out / Nt`` (Nt = neurons of the
      layer); ``y[t] = gamma_1 * (m[t] - mean_1[l, t] / S1) / std_1[l, t] + beta_1 / S1`` with
      ``S1 = (1 + 2 l) Nt``; the value and out-projection biases enter divided by ``S1``; the final
      LayerNorm subtracts ``mean_f / Sf`` and adds ``beta_f / Sf`` with ``Sf = (1 + 2 l)(1 + 2 L) Nt``.

    With ``normalize`` the effects are divided by ``|z|`` (the original code also multiplies them by 100).
    Memory: ``N x Nn x W`` values per image and layer (the original code's ``[b, tokens, neurons, width]``).
    The forward pass is :func:`vision_kernels.reference.clip_forward.forward_record` (the model libraries'
    own modules), so this shares no code with ``vision_kernels.clip``.
    """
    dtype = next(model.parameters()).dtype
    record = forward_record(model, images.to(dtype), keep_hidden={layer})
    num_layers = len(record.blocks)
    later = list(range(layer + 1, num_layers)) if later_layers is None else list(later_layers)
    source = record.blocks[layer]
    total_neurons = source.mlp_out_weight.shape[1]
    index = torch.arange(total_neurons) if neurons is None else torch.tensor(list(neurons), dtype=torch.long)
    index = index.to(images.device)
    act = record.hidden[layer][..., index]  # [B, N, Nn]
    writes = source.mlp_out_weight[:, index].T.to(act.dtype)  # [Nn, W]
    bias_out = source.mlp_out_bias.to(act.dtype)
    if source.ls_2 is not None:
        writes = writes * source.ls_2
        bias_out = bias_out * source.ls_2
    effects = []
    for b in range(act.shape[0]):
        m = act[b][:, :, None] * writes[None]  # [N, Nn, W]: the neurons' writes at every token
        if convention == "even_split":
            m = m + bias_out / total_neurons
        effects.append(_through_later_heads(record, b, m, later, convention, total_neurons))
    out = torch.stack(effects)
    if normalize:
        out = out / record.output.norm(dim=-1).clamp_min(1e-12)[:, None, None]
    return out


@torch.no_grad()
def direct_write_effects(model: torch.nn.Module, images: Tensor, writes: Tensor, later_layers: Sequence[int]) -> Tensor:
    """Per-term second-order effects ``[B, K, E]`` of arbitrary residual-stream writes ``[B, N, K, W]`` (K writes
    per token), through the heads of ``later_layers`` (not normalized): the same pipeline as
    :func:`direct_second_order_effects` for writes that are not single neurons (e.g. a whole MLP's output)."""
    dtype = next(model.parameters()).dtype
    record = forward_record(model, images.to(dtype))
    total = writes.shape[2]
    return torch.stack(
        [_through_later_heads(record, b, writes[b], list(later_layers), "per_term", total) for b in range(len(writes))]
    )


def _through_later_heads(
    record: ForwardRecord, b: int, m: Tensor, later: list[int], convention: str, total_neurons: int
) -> Tensor:
    """Effects ``[K, E]`` of writes ``m [N, K, W]`` of image ``b`` through the heads of the ``later`` layers."""
    tokens, width = m.shape[0], m.shape[2]
    num_layers = len(record.blocks)
    out = m.new_zeros((m.shape[1], record.proj.shape[1]))
    for target in later:
        block = record.blocks[target]
        heads, head_dim = block.heads, width // block.heads
        std = record.ln1_std[b, target][:, None, None]  # [N, 1, 1]
        shares = (1 + 2 * target) * total_neurons
        if convention == "per_term":
            y = block.ln1_weight * (m - m.mean(-1, keepdim=True)) / std
        else:
            y = block.ln1_weight * (m - record.ln1_mean[b, target][:, None, None] / shares) / std
            y = y + block.ln1_bias / shares
        v = y @ block.value_weight.T  # [N, K, W]: values without their bias
        if convention == "even_split":
            v = v + block.value_bias / shares
        v = v.reshape(tokens, -1, heads, head_dim)  # [N, K, H, Dh]
        heads_out = torch.einsum("ht,tkhd->khd", record.attention[b, target].to(m.dtype), v)  # [K, H, Dh]
        x = heads_out.reshape(-1, width) @ block.out_weight.T  # [K, W]: summed over heads, no bias
        if convention == "even_split":
            x = x + block.out_bias / shares
        if block.ls_1 is not None:
            x = x * block.ls_1
        if convention == "per_term":
            out += ((x - x.mean(-1, keepdim=True)) * record.final_weight / record.final_std[b]) @ record.proj
        else:
            final_shares = (1 + 2 * target) * (1 + 2 * num_layers) * total_neurons
            centred = (x - record.final_mean[b] / final_shares) * record.final_weight / record.final_std[b]
            out += (centred + record.final_bias / final_shares) @ record.proj
    return out
