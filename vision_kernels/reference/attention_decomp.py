"""Plain-PyTorch ground truth for vision_kernels.ops.attention_decomp and vision_kernels.clip.

Two references:

* :func:`attention_decomposition`: the op's equation with ``einsum``, materializing every
  per-(layer, head, token) term ``[B, S, H, N, E]`` before summing the axes that are not kept.
* :func:`materialized_decomposition`: the whole decomposition of an open_clip ViT computed the
  way the original TextSpan code does it (its ``forward_per_head`` attention): per layer it
  builds the per-query-row tensors ``[B, N, N, H, Dh]`` (attention times values) and
  ``[B, N, N, H, width]`` (times the out-projection) for every query row, keeps the class-token
  row, stacks the layers into ``[B, L, N, H, width]`` and applies the linearized final LayerNorm
  and the projection to that. It is the benchmark baseline and an independent check of
  :func:`vision_kernels.clip.decompose` (same numbers, none of its folding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._precision import accumulation_dtype


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
) -> Tensor:
    """``term[b, s, h, i] = scale[b] A[b, l_s, h, i] (values[b, l_s, i, h] @ folded[l_s, h]) + offset[b, l_s]``,
    summed over the axes not kept; returns ``[B, Lk, Hk, Nk, E]`` like the op.

    Computed in float32 (float64 for float64 inputs) and returned in ``out_dtype`` (default: the
    input dtype).
    """
    accumulate = accumulation_dtype(values.dtype)
    layer_list = list(range(values.shape[1])) if layers is None else list(layers)
    index = torch.tensor(layer_list, dtype=torch.long, device=values.device)
    v = values.to(accumulate).index_select(1, index)  # [B, S, N, H, Dh]
    a = attn.to(accumulate).index_select(1, index)  # [B, S, H, N]
    m = folded.to(accumulate).index_select(0, index)  # [S, H, Dh, E]
    terms = torch.einsum("bsnhd,shde->bshne", v, m)  # [B, S, H, N, E]
    terms = terms * (scale.to(accumulate)[:, None, None, None, None] * a[..., None])
    if offset is not None:
        terms = terms + offset.to(accumulate).index_select(1, index)[:, :, None, None, :]
    if not keep_tokens:
        terms = terms.sum(3, keepdim=True)
    if not keep_heads:
        terms = terms.sum(2, keepdim=True)
    if not keep_layers:
        terms = terms.sum(1, keepdim=True)
    return terms.to(out_dtype or values.dtype)


@torch.no_grad()
def materialized_decomposition(
    model: torch.nn.Module, images: Tensor, *, convention: str = "per_term", normalize: bool = False
) -> dict[str, Tensor]:
    """Per-(layer, token, head) decomposition of an open_clip ViT, materializing per-query rows.

    Supports open_clip ``VisionTransformer`` towers with the default blocks
    (``nn.MultiheadAttention``), class-token pooling and optional LayerScale. Returns
    ``{"heads": [B, L, N, H, E], "mlps": [B, L, E], "embedding": [B, E], "bias": [B, E],
    "output": [B, E]}`` with the centering ``convention``: ``"per_term"`` (each term minus its
    own mean over the width, exact) or ``"even_split"`` (the original code: the LayerNorm mean
    and bias shared evenly by the 2L + 1 intermediates, an attention layer's share and its
    out-projection bias split evenly over its N * H terms).
    """
    # open_clip's VisionTransformer, read by attribute name (nn.Module types those as Tensor | Module).
    visual: Any = getattr(model, "visual", model)
    x = visual._embeds(images)  # [B, N, W]
    embedding = x[:, 0]  # [B, W]
    attentions, mlps = [], []
    for block in visual.transformer.resblocks:
        attention = block.attn
        heads = attention.num_heads
        width = x.shape[-1]
        head_dim = width // heads
        y = block.ln_1(x)  # [B, N, W]
        qkv = torch.nn.functional.linear(y, attention.in_proj_weight, attention.in_proj_bias)
        q, k, v = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))  # [B, H, N, Dh]
        weights = torch.softmax((q * head_dim**-0.5) @ k.transpose(-1, -2), dim=-1)  # [B, H, N, N]
        per_row = torch.einsum("bhnm,bhmc->bnmhc", weights, v)  # [B, N, N, H, Dh]: every query row
        out_weight = attention.out_proj.weight.reshape(width, heads, head_dim)  # [W, H, Dh]
        per_row = torch.einsum("bnmhc,dhc->bnmhd", per_row, out_weight)  # [B, N, N, H, W]
        gamma1 = block.ls_1.gamma if hasattr(block.ls_1, "gamma") else None
        gamma2 = block.ls_2.gamma if hasattr(block.ls_2, "gamma") else None
        terms = per_row[:, 0].clone()  # [B, N, H, W]: the class-token row (copied, as the original's .cpu() on GPU)
        bias = attention.out_proj.bias
        if gamma1 is not None:
            terms = terms * gamma1
            bias = bias * gamma1
        attentions.append((terms, bias))
        attended = per_row.sum(dim=(2, 3)) + attention.out_proj.bias  # [B, N, W]
        x = x + (attended * gamma1 if gamma1 is not None else attended)
        mlp = block.mlp(block.ln_2(x))  # [B, N, W]
        if gamma2 is not None:
            mlp = mlp * gamma2
        mlps.append(mlp[:, 0])
        x = x + mlp
        del per_row
    residual = x[:, 0]  # [B, W]
    ln = visual.ln_post
    mean = residual.mean(-1, keepdim=True)  # [B, 1]
    std = (residual.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()  # [B, 1]
    gamma = ln.weight if ln.weight is not None else torch.ones_like(residual[0])
    beta = ln.bias if ln.bias is not None else torch.zeros_like(residual[0])
    proj = visual.proj if visual.proj is not None else torch.eye(residual.shape[-1], dtype=residual.dtype)
    heads_width = torch.stack([t for t, _ in attentions], 1)  # [B, L, N, H, W]
    biases = torch.stack([b for _, b in attentions])  # [L, W]
    mlps_width = torch.stack(mlps, 1)  # [B, L, W]
    layers, tokens, heads = heads_width.shape[1], heads_width.shape[2], heads_width.shape[3]
    if convention == "per_term":

        def linearize(t: Tensor, std_: Tensor) -> Tensor:
            return ((t - t.mean(-1, keepdim=True)) * gamma / std_) @ proj

        heads_out = linearize(heads_width, std[:, :, None, None, None])
        mlps_out = linearize(mlps_width, std[:, :, None])
        embedding_out = linearize(embedding, std)
        bias_width = biases.sum(0)  # [W]
        bias_out = linearize(bias_width.expand_as(residual), std) + beta @ proj
    elif convention == "even_split":
        intermediates = 2 * layers + 1
        shares = intermediates * tokens * heads
        heads_width = heads_width + biases[None, :, None, None, :] / (tokens * heads)
        heads_out = (
            (heads_width - mean[:, :, None, None, None] / shares) * gamma / std[:, :, None, None, None] + beta / shares
        ) @ proj
        mlps_out = (
            (mlps_width - mean[:, :, None] / intermediates) * gamma / std[:, :, None] + beta / intermediates
        ) @ proj
        embedding_out = ((embedding - mean / intermediates) * gamma / std + beta / intermediates) @ proj
        bias_out = torch.zeros_like(embedding_out)
    else:
        raise ValueError(f"unknown convention {convention!r}")
    output = visual(images)
    if normalize:
        norm = output.norm(dim=-1).clamp_min(1e-12)  # [B]
        heads_out = heads_out / norm[:, None, None, None, None]
        mlps_out = mlps_out / norm[:, None, None]
        embedding_out = embedding_out / norm[:, None]
        bias_out = bias_out / norm[:, None]
        output = output / norm[:, None]
    return {"heads": heads_out, "mlps": mlps_out, "embedding": embedding_out, "bias": bias_out, "output": output}
