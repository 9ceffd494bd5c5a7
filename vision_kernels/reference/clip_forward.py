"""A plain forward pass of a CLIP ViT that keeps what the references need, written against the model
libraries directly (open_clip ``VisionTransformer`` and Hugging Face ``CLIPVisionModel[WithProjection]``).

It shares no code with ``vision_kernels.clip`` (the code it checks): each block is recomputed from the
module's own parameters, the way the libraries' forward passes do, and the result is compared with the
library's own output in the tests. Supports the default blocks only (standard multi-head attention,
class-token pooling, optional LayerScale for open_clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["BlockWeights", "ForwardRecord", "forward_record"]


@dataclass
class BlockWeights:
    """One block's parameters in one layout: ``y @ W.T + b`` for every linear map."""

    ln1_weight: Tensor  # [W]
    ln1_bias: Tensor  # [W]
    ln1_eps: float
    value_weight: Tensor  # [W, W]: rows h * Dh .. (h + 1) * Dh are head h
    value_bias: Tensor  # [W]
    out_weight: Tensor  # [W, W]
    out_bias: Tensor  # [W]
    ls_1: Tensor | None  # [W] LayerScale of the attention branch
    ls_2: Tensor | None  # [W] LayerScale of the MLP branch
    mlp_out_weight: Tensor  # [W, hidden]
    mlp_out_bias: Tensor  # [W]
    heads: int


@dataclass
class ForwardRecord:
    """``B`` images, ``L`` layers, ``N`` tokens, width ``W``, ``H`` heads."""

    blocks: list[BlockWeights]
    ln1_mean: Tensor  # [B, L, N]
    ln1_std: Tensor  # [B, L, N] sqrt(var + eps)
    attention: Tensor  # [B, L, H, N] class-token attention rows
    hidden: dict[int, Tensor]  # layer -> [B, N, hidden] MLP activations after the non-linearity
    final_weight: Tensor  # [W]
    final_bias: Tensor  # [W]
    final_mean: Tensor  # [B]
    final_std: Tensor  # [B]
    proj: Tensor  # [W, E]
    output: Tensor  # [B, E] the model's own image embedding


def _stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return x.mean(-1), (x.var(-1, unbiased=False) + eps).sqrt()


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    mean, std = _stats(x, eps)
    return (x - mean[..., None]) / std[..., None] * weight + bias


def _class_attention(y: Tensor, q_w: Tensor, q_b: Tensor, k_w: Tensor, k_b: Tensor, heads: int) -> Tensor:
    """Softmax attention weights of the class token ``[B, H, N]`` (logits scaled by ``Dh ** -0.5``)."""
    batch, tokens, width = y.shape
    head_dim = width // heads
    q = (y[:, :1] @ q_w.T + q_b).reshape(batch, 1, heads, head_dim).transpose(1, 2)  # [B, H, 1, Dh]
    k = (y @ k_w.T + k_b).reshape(batch, tokens, heads, head_dim).transpose(1, 2)  # [B, H, N, Dh]
    return torch.softmax((q * head_dim**-0.5) @ k.transpose(-1, -2), dim=-1)[:, :, 0]  # [B, H, N]


def _attention_all(y: Tensor, weights: list[Tensor], biases: list[Tensor], heads: int) -> Tensor:
    """Full multi-head attention output before the out-projection, ``[B, N, W]``."""
    batch, tokens, width = y.shape
    head_dim = width // heads
    q, k, v = (
        (y @ w.T + b).reshape(batch, tokens, heads, head_dim).transpose(1, 2)
        for w, b in zip(weights, biases, strict=True)
    )
    attn = torch.softmax((q * head_dim**-0.5) @ k.transpose(-1, -2), dim=-1)  # [B, H, N, N]
    return (attn @ v).transpose(1, 2).reshape(batch, tokens, width)


def _ones_zeros(norm: Any, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    weight = norm.weight if getattr(norm, "weight", None) is not None else like.new_ones(width)
    bias = norm.bias if getattr(norm, "bias", None) is not None else like.new_zeros(width)
    return weight, bias


def _open_clip(model: Any, images: Tensor, keep: set[int]) -> ForwardRecord:
    visual: Any = getattr(model, "visual", model)
    x = visual._embeds(images)  # [B, N, W] after the pre-LayerNorm
    blocks, ln1_mean, ln1_std, attention, hidden = [], [], [], [], {}
    for index, block in enumerate(visual.transformer.resblocks):
        attn = block.attn
        if not isinstance(attn, torch.nn.MultiheadAttention):
            raise ValueError("reference.clip_forward: only nn.MultiheadAttention blocks are supported")
        width = x.shape[-1]
        q_w, k_w, v_w = attn.in_proj_weight.chunk(3)
        q_b, k_b, v_b = attn.in_proj_bias.chunk(3)
        ln1_w, ln1_b = _ones_zeros(block.ln_1, width, x)
        mean, std = _stats(x, block.ln_1.eps)
        ln1_mean.append(mean)
        ln1_std.append(std)
        y = _layer_norm(x, ln1_w, ln1_b, block.ln_1.eps)
        attention.append(_class_attention(y, q_w, q_b, k_w, k_b, attn.num_heads))
        out = _attention_all(y, [q_w, k_w, v_w], [q_b, k_b, v_b], attn.num_heads) @ attn.out_proj.weight.T
        out = out + attn.out_proj.bias
        ls_1 = block.ls_1.gamma if hasattr(block.ls_1, "gamma") else None
        ls_2 = block.ls_2.gamma if hasattr(block.ls_2, "gamma") else None
        x = x + (out * ls_1 if ls_1 is not None else out)
        mlp = block.mlp
        act = mlp.gelu(mlp.c_fc(block.ln_2(x)))  # [B, N, hidden]
        if index in keep:
            hidden[index] = act
        m = mlp.c_proj(act)
        x = x + (m * ls_2 if ls_2 is not None else m)
        blocks.append(
            BlockWeights(
                ln1_w, ln1_b, block.ln_1.eps, v_w, v_b, attn.out_proj.weight, attn.out_proj.bias, ls_1, ls_2,
                mlp.c_proj.weight, mlp.c_proj.bias, attn.num_heads,
            )
        )  # fmt: skip
    residual = x[:, 0]  # [B, W]
    final_w, final_b = _ones_zeros(visual.ln_post, residual.shape[-1], residual)
    final_mean, final_std = _stats(residual, visual.ln_post.eps)
    proj = visual.proj if visual.proj is not None else torch.eye(residual.shape[-1], dtype=residual.dtype)
    return ForwardRecord(
        blocks, torch.stack(ln1_mean, 1), torch.stack(ln1_std, 1), torch.stack(attention, 1), hidden,
        final_w, final_b, final_mean, final_std, proj, visual(images),
    )  # fmt: skip


def _hugging_face(model: Any, images: Tensor, keep: set[int]) -> ForwardRecord:
    vision = model.vision_model
    projection = getattr(model, "visual_projection", None)
    x = vision.pre_layrnorm(vision.embeddings(images))  # [B, N, W]
    blocks, ln1_mean, ln1_std, attention, hidden = [], [], [], [], {}
    for index, layer in enumerate(vision.encoder.layers):
        attn = layer.self_attn
        heads = attn.num_heads
        mean, std = _stats(x, layer.layer_norm1.eps)
        ln1_mean.append(mean)
        ln1_std.append(std)
        y = layer.layer_norm1(x)
        weights = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        attention.append(_class_attention(y, weights[0], biases[0], weights[1], biases[1], heads))
        x = x + attn.out_proj(_attention_all(y, weights, biases, heads))
        act = layer.mlp.activation_fn(layer.mlp.fc1(layer.layer_norm2(x)))  # [B, N, hidden]
        if index in keep:
            hidden[index] = act
        x = x + layer.mlp.fc2(act)
        blocks.append(
            BlockWeights(
                layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps, attn.v_proj.weight,
                attn.v_proj.bias, attn.out_proj.weight, attn.out_proj.bias, None, None, layer.mlp.fc2.weight,
                layer.mlp.fc2.bias, heads,
            )
        )  # fmt: skip
    residual = x[:, 0]
    norm = vision.post_layernorm
    final_mean, final_std = _stats(residual, norm.eps)
    width = residual.shape[-1]
    proj = projection.weight.T if projection is not None else torch.eye(width, dtype=residual.dtype)
    if projection is None:
        output = vision(pixel_values=images).pooler_output
    elif hasattr(model, "get_image_features"):  # CLIPModel
        output = model.get_image_features(pixel_values=images)
        output = output if isinstance(output, Tensor) else output.pooler_output
    else:  # CLIPVisionModelWithProjection
        output = model(pixel_values=images).image_embeds
    return ForwardRecord(
        blocks, torch.stack(ln1_mean, 1), torch.stack(ln1_std, 1), torch.stack(attention, 1), hidden,
        norm.weight, norm.bias, final_mean, final_std, proj, output,
    )  # fmt: skip


@torch.no_grad()
def forward_record(model: torch.nn.Module, images: Tensor, keep_hidden: set[int] | None = None) -> ForwardRecord:
    """Run ``model`` on ``images`` ``[B, 3, S, S]`` and record statistics, attention rows and MLP activations
    of the layers in ``keep_hidden``."""
    keep = set(keep_hidden or ())
    if hasattr(model, "vision_model"):
        return _hugging_face(model, images, keep)
    visual = getattr(model, "visual", model)
    if hasattr(visual, "transformer") and hasattr(visual.transformer, "resblocks"):
        return _open_clip(model, images, keep)
    raise ValueError(f"reference.clip_forward: unsupported model {type(model).__name__}")
