"""Vision towers the decomposition understands: open_clip ViTs and Hugging Face CLIP vision models.

A :class:`VisionTower` exposes what the decomposition needs from a model, read from the
module's own weights (no hooks): the patch/class/position embedding with the pre-LayerNorm, one
:class:`Block` per residual block (LayerNorm, per-head queries/keys/values, attention, output
projection, LayerScale, MLP) and the final LayerNorm and projection. The decomposition's
forward pass (:mod:`vision_kernels.clip.capture`) recomputes every block with these pieces.

Supported:

* open_clip ``CLIP`` / ``CustomTextCLIP`` models (their ``.visual``) and ``VisionTransformer``
  towers with class-token pooling (``pool_type="tok"``, ``final_ln_after_pool`` either way),
  LayerScale (``ls_1``/``ls_2``), any MLP activation (GELU, QuickGELU, ...), ``no_ln_pre``,
  ``proj=None``, learnable or sin-cos position embeddings, and the custom block's
  ``qk_norm``, scaled cosine attention, ``scale_heads`` and ``scale_fc``. Patch dropout and
  dropout are inactive (inference semantics).
* Hugging Face ``CLIPVisionModelWithProjection`` and ``CLIPModel`` (vision side), and
  ``CLIPVisionModel`` (no projection).

Rejected with a clear error: attention pooling (``attentional_pool``/CoCa), average or no pooling,
the custom block's ``scale_attn``/``scale_attn_inner`` (a LayerNorm between the heads and the
residual stream makes per-head terms non-linear), key/value biases or zero attention in
``nn.MultiheadAttention``, timm and ResNet towers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _optional

__all__ = ["VisionTower", "Block", "FinalNorm", "as_vision_tower"]

FUNCTION = "vision_kernels.clip.decompose"

# The adapters read open_clip / transformers modules by attribute name (``block.attn.out_proj``,
# ``vision.embeddings``, ...). ``nn.Module.__getattr__`` types every such attribute as
# ``Tensor | Module``, which says nothing about these models' structure, so the wrapped modules are
# held as ``ForeignModule`` (Any) and the accessors' annotated return types carry the checking.
ForeignModule = Any


def _is_identity(module: object) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _unsupported(reason: str) -> ValueError:
    return ValueError(f"{FUNCTION}: argument 'model' cannot be decomposed exactly: {reason}")


def _layer_scale(module: nn.Module) -> Tensor | None:
    """The LayerScale vector of ``ls_1``/``ls_2`` (None for identity)."""
    if _is_identity(module):
        return None
    gamma = getattr(module, "gamma", None)
    if gamma is None:
        raise _unsupported(f"unknown layer-scale module {type(module).__name__}")
    return gamma


@dataclass
class FinalNorm:
    """The final LayerNorm and projection: ``z = (gamma * (r - mean(r)) / std(r) + beta) @ proj``.

    Attributes:
        weight: ``[W]`` gamma (ones when the LayerNorm has no affine weight).
        bias: ``[W]`` beta (zeros when absent).
        eps: LayerNorm epsilon; ``std(r) = sqrt(var(r) + eps)``.
        proj: ``[W, E]`` projection (identity when the tower has none).
    """

    weight: Tensor
    bias: Tensor
    eps: float
    proj: Tensor


class Block(ABC):
    """One residual block ``x += ls_1 * attn(ln_1(x)); x += ls_2 * mlp(ln_2(x))`` seen per head."""

    heads: int
    head_dim: int
    norm_1: nn.Module  # ln_1, the LayerNorm before the attention
    norm_2: nn.Module  # ln_2, the LayerNorm before the MLP

    @abstractmethod
    def qkv(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries and keys as the attention scores use them, and values: each ``[B, H, N, Dh]``."""

    def attention_logits_scale(self) -> Tensor | float:
        """Factor applied to ``q @ k^T`` before the softmax."""
        return self.head_dim**-0.5

    def normalizes_qk(self) -> bool:
        """Scaled cosine attention: q and k are L2-normalized before the product."""
        return False

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention output of every head and token ``[B, H, N, Dh]`` (before head scaling)."""
        if self.normalizes_qk():
            logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)  # [B, H, N, N]
            return torch.softmax(logits * self.attention_logits_scale(), dim=-1) @ v
        return F.scaled_dot_product_attention(q, k, v)

    def class_attention(self, q: Tensor, k: Tensor) -> Tensor:
        """Class-token attention row ``A[h, 0, :]`` of every head: ``[B, H, N]``."""
        q0 = q[:, :, :1]  # [B, H, 1, Dh]
        if self.normalizes_qk():
            logits = F.normalize(q0, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
        else:
            logits = q0 @ k.transpose(-1, -2)  # [B, H, 1, N]
        return torch.softmax(logits * self.attention_logits_scale(), dim=-1)[:, :, 0]

    def head_scale(self) -> Tensor | None:
        """Per-head factor on the attention output ``[H]`` (NormFormer's scale_heads), or None."""
        return None

    @abstractmethod
    def out_weight(self) -> Tensor:
        """Output projection weight ``[W, W]`` (``out = o @ weight^T + bias``)."""

    @abstractmethod
    def out_bias(self) -> Tensor | None: ...

    def ls_1(self) -> Tensor | None:
        return None

    def ls_2(self) -> Tensor | None:
        return None

    @abstractmethod
    def mlp(self, y: Tensor, keep_hidden: bool = False) -> tuple[Tensor, Tensor | None]:
        """MLP on ``ln_2``'s output ``[B, N, W]``, without LayerScale; with its hidden activations if asked."""

    def project(self, o: Tensor) -> Tensor:
        """``ls_1 * (merge_heads(o * head_scale) @ W_O^T + b_O)``: ``[B, H, N, Dh] -> [B, N, W]``."""
        scale = self.head_scale()
        if scale is not None:
            o = o * scale.view(1, -1, 1, 1)
        merged = o.transpose(1, 2).flatten(2)  # [B, N, W]
        out = F.linear(merged, self.out_weight(), self.out_bias())
        gamma = self.ls_1()
        return out if gamma is None else out * gamma

    def parameters(self) -> list[Tensor]:
        """Tensors the folded matrices depend on (their versions invalidate the cache)."""
        tensors = [self.out_weight(), self.out_bias(), self.head_scale(), self.ls_1()]
        return [t for t in tensors if t is not None]

    # Accessors for analyses through the values and the MLP neurons (second-order effects).

    @abstractmethod
    def value_weight(self) -> Tensor:
        """Value projection weight ``[H * Dh, W]``: ``v = y @ weight^T + bias``, heads in order along axis 0."""

    @abstractmethod
    def value_bias(self) -> Tensor | None: ...

    @abstractmethod
    def mlp_out_weight(self) -> Tensor:
        """MLP output projection ``[W, hidden]``: neuron ``n`` writes ``act_n * weight[:, n]`` (times ``ls_2``).

        Raises ValueError when a LayerNorm sits between the neurons and the projection (``scale_fc``):
        the write of one neuron is then not linear in its activation.
        """

    @abstractmethod
    def mlp_out_bias(self) -> Tensor | None: ...

    def mlp_width(self) -> int:
        """Number of MLP neurons (hidden units)."""
        return int(self.mlp_out_weight().shape[1])


class VisionTower(ABC):
    """A ViT image tower with class-token pooling, seen as the decomposition needs it."""

    module: nn.Module
    blocks: list[Block]
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_channels: int
    width: int
    heads: int

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1] + 1

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def dtype(self) -> torch.dtype:
        return self.final_norm().proj.dtype

    @property
    def device(self) -> torch.device:
        return self.final_norm().proj.device

    @abstractmethod
    def embed(self, images: Tensor) -> Tensor:
        """Residual stream entering the first block ``[B, N, W]`` (after the pre-LayerNorm)."""

    @abstractmethod
    def final_norm(self) -> FinalNorm: ...

    @abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """The model's own image embedding ``[B, E]`` (its forward, for checks)."""

    def embed_dim(self) -> int:
        return int(self.final_norm().proj.shape[1])

    @abstractmethod
    def parameters(self) -> list[Tensor]:
        """Tensors the folded matrices depend on (their versions invalidate cached folds)."""


# ---------------------------------------------------------------- open_clip


class _OpenClipBlock(Block):
    def __init__(self, block: ForeignModule) -> None:
        self.block: ForeignModule = block
        attention = block.attn
        if not _is_identity(getattr(block, "ln_attn", None)):
            raise _unsupported("scale_attn (a LayerNorm after the attention) mixes the heads non-linearly")
        if hasattr(block, "ln_1_kv"):
            raise _unsupported("cross-attention blocks are not image-tower blocks")
        if isinstance(attention, nn.MultiheadAttention):
            if attention.bias_k is not None or attention.bias_v is not None or attention.add_zero_attn:
                raise _unsupported("nn.MultiheadAttention with add_bias_kv or add_zero_attn")
            if not attention._qkv_same_embed_dim:
                raise _unsupported("nn.MultiheadAttention with separate key/value sizes")
            self._custom = False
        else:
            if not _is_identity(getattr(attention, "ln_inner", None)):
                raise _unsupported("scale_attn_inner (a LayerNorm over the merged heads) mixes the heads non-linearly")
            self._custom = True
        self.heads = int(attention.num_heads)
        self.head_dim = int(attention.in_proj_weight.shape[1]) // self.heads
        self.norm_1, self.norm_2 = block.ln_1, block.ln_2

    def qkv(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attention = self.block.attn
        qkv = F.linear(y, attention.in_proj_weight, attention.in_proj_bias)  # [B, N, 3W]
        q, k, v = (t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if self._custom:
            q, k = attention.ln_q(q), attention.ln_k(k)
        return q, k, v

    def normalizes_qk(self) -> bool:
        return self._custom and self.block.attn.logit_scale is not None

    def attention_logits_scale(self) -> Tensor | float:
        if self.normalizes_qk():
            attention = self.block.attn
            return torch.clamp(attention.logit_scale, max=attention.logit_scale_max).exp()  # [H, 1, 1]
        return self.head_dim**-0.5

    def head_scale(self) -> Tensor | None:
        if self._custom and self.block.attn.head_scale is not None:
            return self.block.attn.head_scale.reshape(-1)
        return None

    def out_weight(self) -> Tensor:
        return self.block.attn.out_proj.weight

    def out_bias(self) -> Tensor | None:
        return self.block.attn.out_proj.bias

    def ls_1(self) -> Tensor | None:
        return _layer_scale(self.block.ls_1)

    def ls_2(self) -> Tensor | None:
        return _layer_scale(self.block.ls_2)

    def value_weight(self) -> Tensor:
        width = self.heads * self.head_dim
        return self.block.attn.in_proj_weight[2 * width : 3 * width]

    def value_bias(self) -> Tensor | None:
        bias = self.block.attn.in_proj_bias
        width = self.heads * self.head_dim
        return None if bias is None else bias[2 * width : 3 * width]

    def mlp_out_weight(self) -> Tensor:
        if not _is_identity(getattr(self.block.mlp, "ln", None)):
            raise _unsupported(
                "scale_fc (a LayerNorm between the MLP neurons and c_proj) makes a neuron's write non-linear"
            )
        return self.block.mlp.c_proj.weight

    def mlp_out_bias(self) -> Tensor | None:
        return self.block.mlp.c_proj.bias

    def mlp(self, y: Tensor, keep_hidden: bool = False) -> tuple[Tensor, Tensor | None]:
        mlp = self.block.mlp
        if not keep_hidden:
            return mlp(y), None
        hidden = mlp.gelu(mlp.c_fc(y))  # [B, N, hidden]
        inner = mlp.ln(hidden) if hasattr(mlp, "ln") else hidden
        return mlp.c_proj(inner), hidden


class OpenClipTower(VisionTower):
    """open_clip ``VisionTransformer`` with class-token pooling."""

    module: ForeignModule

    def __init__(self, visual: ForeignModule) -> None:
        self.module = visual
        if getattr(visual, "attn_pool", None) is not None:
            raise _unsupported("attention pooling (attentional_pool / CoCa) replaces the class token")
        if getattr(visual, "pool_type", "tok") != "tok":
            raise _unsupported(f"pool_type={visual.pool_type!r}; only class-token pooling ('tok') is linear per token")
        self.blocks = [_OpenClipBlock(block) for block in visual.transformer.resblocks]
        image_h, image_w = visual.image_size
        patch_h, patch_w = visual.patch_size
        self.image_size = (int(image_h), int(image_w))
        self.patch_size = (int(patch_h), int(patch_w))
        self.in_channels = int(visual.conv1.in_channels)
        self.width = int(visual.conv1.out_channels)
        self.heads = self.blocks[0].heads if self.blocks else 1

    def embed(self, images: Tensor) -> Tensor:
        visual = self.module
        x = visual.conv1(images).flatten(2).transpose(1, 2)  # [B, N - 1, W]
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # [B, N, W]
        return visual.ln_pre(x)

    def final_norm(self) -> FinalNorm:
        ln = self.module.ln_post
        proj = self.module.proj
        width = self.width
        reference = proj if proj is not None else self.module.conv1.weight
        weight = (
            ln.weight if ln.weight is not None else torch.ones(width, dtype=reference.dtype, device=reference.device)
        )
        bias = ln.bias if ln.bias is not None else torch.zeros_like(weight)
        if proj is None:
            proj = torch.eye(width, dtype=weight.dtype, device=weight.device)
        return FinalNorm(weight, bias, float(ln.eps), proj)

    def encode(self, images: Tensor) -> Tensor:
        out = self.module(images)
        return out[0] if isinstance(out, tuple) else out

    def parameters(self) -> list[Tensor]:
        ln = self.module.ln_post
        final = [t for t in (ln.weight, ln.bias, self.module.proj) if t is not None]
        return final + [p for b in self.blocks for p in b.parameters()]


# ---------------------------------------------------------------- Hugging Face transformers


class _HuggingFaceBlock(Block):
    def __init__(self, layer: ForeignModule) -> None:
        self.layer: ForeignModule = layer
        attention = layer.self_attn
        self.heads = int(attention.num_heads)
        self.head_dim = int(attention.head_dim)
        self._scale = float(getattr(attention, "scale", self.head_dim**-0.5))
        self.norm_1, self.norm_2 = layer.layer_norm1, layer.layer_norm2

    def qkv(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attention = self.layer.self_attn
        split = (self.heads, self.head_dim)
        q = attention.q_proj(y).unflatten(-1, split).transpose(1, 2)  # [B, H, N, Dh]
        k = attention.k_proj(y).unflatten(-1, split).transpose(1, 2)
        v = attention.v_proj(y).unflatten(-1, split).transpose(1, 2)
        return q, k, v

    def attention_logits_scale(self) -> float:
        return self._scale

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=self._scale)

    def out_weight(self) -> Tensor:
        return self.layer.self_attn.out_proj.weight

    def out_bias(self) -> Tensor | None:
        return self.layer.self_attn.out_proj.bias

    def value_weight(self) -> Tensor:
        return self.layer.self_attn.v_proj.weight

    def value_bias(self) -> Tensor | None:
        return self.layer.self_attn.v_proj.bias

    def mlp_out_weight(self) -> Tensor:
        return self.layer.mlp.fc2.weight

    def mlp_out_bias(self) -> Tensor | None:
        return self.layer.mlp.fc2.bias

    def mlp(self, y: Tensor, keep_hidden: bool = False) -> tuple[Tensor, Tensor | None]:
        mlp = self.layer.mlp
        hidden = mlp.activation_fn(mlp.fc1(y))  # [B, N, hidden]
        return mlp.fc2(hidden), hidden if keep_hidden else None


class HuggingFaceTower(VisionTower):
    """transformers ``CLIPVisionModelWithProjection`` / ``CLIPModel`` / ``CLIPVisionModel``."""

    module: ForeignModule

    def __init__(self, model: ForeignModule, vision: ForeignModule) -> None:
        self.module = model
        self.vision: ForeignModule = vision
        self.projection = getattr(model, "visual_projection", None)
        self.blocks = [_HuggingFaceBlock(layer) for layer in vision.encoder.layers]
        embeddings = vision.embeddings
        self.image_size = (int(embeddings.image_size), int(embeddings.image_size))
        self.patch_size = (int(embeddings.patch_size), int(embeddings.patch_size))
        self.in_channels = int(embeddings.patch_embedding.in_channels)
        self.width = int(embeddings.embed_dim)
        self.heads = self.blocks[0].heads if self.blocks else 1

    def embed(self, images: Tensor) -> Tensor:
        embeddings = self.vision.embeddings
        x = embeddings.patch_embedding(images).flatten(2).transpose(1, 2)  # [B, N - 1, W]
        cls = embeddings.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + embeddings.position_embedding.weight.to(x.dtype)  # [B, N, W]
        return self.vision.pre_layrnorm(x)

    def final_norm(self) -> FinalNorm:
        ln = self.vision.post_layernorm
        if self.projection is not None:
            proj = self.projection.weight.t()
            if self.projection.bias is not None:
                raise _unsupported("a visual projection with a bias")
        else:
            proj = torch.eye(self.width, dtype=ln.weight.dtype, device=ln.weight.device)
        return FinalNorm(
            ln.weight, ln.bias if ln.bias is not None else torch.zeros_like(ln.weight), float(ln.eps), proj
        )

    def encode(self, images: Tensor) -> Tensor:
        if self.projection is None:
            return self.vision(pixel_values=images).pooler_output
        if hasattr(self.module, "get_image_features"):
            out = self.module.get_image_features(pixel_values=images)
            return out if isinstance(out, Tensor) else out.pooler_output
        return self.module(pixel_values=images).image_embeds

    def parameters(self) -> list[Tensor]:
        ln = self.vision.post_layernorm
        projection = None if self.projection is None else self.projection.weight
        final = [t for t in (ln.weight, ln.bias, projection) if t is not None]
        return final + [p for b in self.blocks for p in b.parameters()]


# ---------------------------------------------------------------- dispatch


def as_vision_tower(model: object) -> VisionTower:
    """The :class:`VisionTower` of ``model`` (open_clip model or tower, or a transformers CLIP model).

    Raises:
        TypeError: the model type is not supported (names the type and what is).
        ValueError: the model is a supported type in a configuration that cannot be decomposed exactly.
    """
    if isinstance(model, VisionTower):
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"{FUNCTION}: argument 'model' must be a torch.nn.Module, got {type(model).__name__}")
    try:  # without open_clip no model can be an open_clip ViT: transformers models still work
        VisionTransformer = _optional.require("open_clip.transformer", feature=FUNCTION).VisionTransformer
    except _optional.MissingDependencyError:  # pragma: no cover - open_clip is an optional dependency
        VisionTransformer = None
    visual = getattr(model, "visual", model)
    if VisionTransformer is not None and isinstance(visual, VisionTransformer):
        return OpenClipTower(visual)
    for vision in (getattr(model, "vision_model", None), model):
        if all(hasattr(vision, name) for name in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm")):
            return HuggingFaceTower(model, vision)
    described = type(visual).__name__ if visual is not model else type(model).__name__
    raise TypeError(
        f"{FUNCTION}: argument 'model' must be an open_clip ViT (CLIP model or VisionTransformer tower) or a "
        f"transformers CLIPVisionModelWithProjection / CLIPModel / CLIPVisionModel, got {described}"
        + (" (timm and ResNet towers have no per-head attention to decompose)" if visual is not model else "")
    )


def check_images(tower: VisionTower, images: object, function: str = FUNCTION) -> Tensor:
    """Validate ``images`` for ``tower``: a floating ``[B, C, H, W]`` tensor of the model's size, on its device."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{function}: argument 'images' must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(
            f"{function}: argument 'images' must have 4 dimensions [B, C, H, W], got {images.dim()} "
            f"with shape {list(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"{function}: argument 'images' must be a floating tensor, got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{function}: argument 'images' must hold at least one image, got shape {list(images.shape)}")
    if images.shape[1] != tower.in_channels:
        raise ValueError(
            f"{function}: argument 'images' must have {tower.in_channels} channels in dimension 1, "
            f"got shape {list(images.shape)}"
        )
    if tuple(images.shape[2:]) != tuple(tower.image_size):
        raise ValueError(
            f"{function}: argument 'images' must be {tower.image_size[0]} x {tower.image_size[1]} pixels "
            f"(the model's image size), got shape {list(images.shape)}"
        )
    if images.device != tower.device:
        raise ValueError(
            f"{function}: arguments 'images' and 'model' must be on the same device, "
            f"got {images.device} and {tower.device}"
        )
    return images.to(tower.dtype)
