"""One forward pass of a CLIP ViT that records what the decompositions need.

:func:`capture` recomputes every block from the module's own weights (no hooks) and keeps, in a
:class:`Capture`, the quantities from which the image embedding is an exact sum of terms:

    r = e0 + sum_l attn_l + sum_l mlp_l                       (class-token residual stream)
    attn_l[0] = ls_1 * (sum_h sum_i A[l, h, 0, i] W_O^h v[l, i, h] + b_O)
    z = (gamma * (r - mean(r)) / std(r) + beta) @ proj

This structure is the public contract other analyses build on (second-order neuron effects,
sparse text decompositions, nearest-neighbour search over head outputs): per-layer values of
every token, class-token attention rows, LayerNorm statistics of the residual stream at every
token, block outputs at the class token, and optionally per-token MLP outputs, MLP hidden
activations and the whole residual stream.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeGuard, cast

import torch
from torch import Tensor, nn

from .. import _optional
from ._checks import layer_index
from .towers import as_vision_tower, check_images

__all__ = ["Capture", "capture"]


@dataclass
class Capture:
    """Quantities recorded by one forward pass (``B`` images, ``L`` layers, ``N`` tokens, width ``W``).

    Token 0 is the class token; tokens ``1..N-1`` are the patches in row-major grid order.

    Attributes:
        values: ``[B, L, N, H, Dh]`` value vectors ``v = W_V^h ln_1(x_i) + b_V^h`` of every layer,
            token and head (a view of a contiguous ``[B, L, N, W]`` buffer).
        attention: ``[B, L, H, N]`` class-token attention rows ``A[l, h, 0, :]``.
        embedding: ``[B, W]`` class token entering the first block (after the pre-LayerNorm): ``e0``.
        attention_out: ``[B, L, W]`` attention block outputs at the class token (LayerScale and
            out-projection bias included): ``attn_l[0]``.
        mlp_out: ``[B, L, W]`` MLP block outputs at the class token (LayerScale included).
        residual: ``[B, W]`` class-token residual stream after the last block, ``r``.
        final_mean, final_std: ``[B]`` mean and ``sqrt(var + eps)`` of ``r`` over the width (the
            final LayerNorm's statistics).
        ln1_mean, ln1_std: ``[B, L, N]`` statistics of the residual stream entering each block's
            ``ln_1`` (std includes the LayerNorm's eps).
        ln2_mean, ln2_std: ``[B, L, N]`` the same for ``ln_2``.
        output: ``[B, E]`` the image embedding recomputed from ``r`` (not normalized).
        grid: ``(rows, cols)`` of patches.
        mlp_tokens: ``[B, L, N, W]`` MLP block outputs at every token, if requested.
        neurons: ``[B, L', N, hidden]`` MLP hidden activations (after the non-linearity) of the layers
            :attr:`neuron_layers` (all L layers with ``keep_neurons=True``), if requested.
        residual_tokens: ``[B, L + 1, N, W]`` residual stream entering every block and after the
            last one, if requested.
        neuron_layers: the model layer of each entry along axis 1 of :attr:`neurons` (None without neurons).
    """

    values: Tensor
    attention: Tensor
    embedding: Tensor
    attention_out: Tensor
    mlp_out: Tensor
    residual: Tensor
    final_mean: Tensor
    final_std: Tensor
    ln1_mean: Tensor
    ln1_std: Tensor
    ln2_mean: Tensor
    ln2_std: Tensor
    output: Tensor
    grid: tuple[int, int]
    mlp_tokens: Tensor | None = None
    neurons: Tensor | None = None
    residual_tokens: Tensor | None = None
    neuron_layers: tuple[int, ...] | None = None

    def layer_neurons(self, layer: int) -> Tensor:
        """``[B, N, hidden]`` MLP hidden activations of model layer ``layer`` (a view of :attr:`neurons`)."""
        if self.neurons is None or self.neuron_layers is None:
            raise ValueError(
                "vision_kernels.clip.Capture.layer_neurons: the capture holds no MLP activations; "
                "capture with keep_neurons=True (or a list of layers)"
            )
        if layer not in self.neuron_layers:
            raise IndexError(
                f"vision_kernels.clip.Capture.layer_neurons: argument 'layer' must be one of the captured layers "
                f"{list(self.neuron_layers)}, got {layer}"
            )
        return self.neurons[:, self.neuron_layers.index(layer)]

    @property
    def num_layers(self) -> int:
        return int(self.values.shape[1])

    @property
    def num_heads(self) -> int:
        return int(self.values.shape[3])

    def to(self, device: torch.device | str) -> Capture:
        """A copy with every tensor moved to ``device``."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device) if isinstance(value, Tensor) else value
        return Capture(**moved)


def _statistics(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Mean and ``sqrt(var + eps)`` over the last axis, as LayerNorm computes them."""
    var, mean = torch.var_mean(x, dim=-1, unbiased=False)
    return mean, (var + eps).sqrt()


def _plain_layer_norm(norm: nn.Module, x: Tensor) -> TypeGuard[nn.LayerNorm]:
    """Whether ``norm(x)`` is exactly ``torch.native_layer_norm`` (torch's, open_clip's LayerNorm and LayerNormFp32
    on inputs of the weight's dtype), which also returns the statistics."""
    if not isinstance(norm, nn.LayerNorm) or type(norm).forward not in _plain_forwards():
        return False
    weight = norm.weight
    return weight is not None and norm.bias is not None and weight.dtype == x.dtype == torch.float32


def _normalize(norm: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(norm(x), mean, sqrt(var + eps))`` of a LayerNorm over the last axis, statistics ``[B, N]``."""
    if _plain_layer_norm(norm, x):
        y, mean, rstd = torch.native_layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return y, mean.squeeze(-1), rstd.squeeze(-1).reciprocal()
    mean, std = _statistics(x, float(cast(float, norm.eps)))  # a LayerNorm-like module's epsilon
    return norm(x), mean, std


@functools.cache
def _plain_forwards() -> frozenset:
    forwards = {nn.LayerNorm.forward}
    try:  # open_clip is optional: without it, its LayerNorms cannot occur
        transformer = _optional.require("open_clip.transformer", feature="vision_kernels.clip.capture")
        forwards |= {transformer.LayerNorm.forward, transformer.LayerNormFp32.forward}
    except _optional.MissingDependencyError:  # pragma: no cover - open_clip is optional
        pass
    return frozenset(forwards)


def capture(
    model: object,
    images: Tensor,
    *,
    keep_mlp_tokens: bool = False,
    keep_neurons: bool | Sequence[int] = False,
    keep_residual_tokens: bool = False,
) -> Capture:
    """Run ``model``'s image tower on ``images`` and record a :class:`Capture`.

    Every block is recomputed from the module's weights with inference semantics (no dropout, no
    patch dropout), so the recorded values are exactly those of ``model.encode_image``.

    Args:
        model: open_clip CLIP model or ViT tower, or a transformers CLIP vision model (see
            :func:`vision_kernels.clip.towers.as_vision_tower`).
        images: ``[B, C, H, W]`` preprocessed images of the model's size, on its device.
        keep_mlp_tokens, keep_neurons, keep_residual_tokens: also keep the optional per-token tensors;
            ``keep_neurons`` may list the layers whose MLP activations to keep (negative counts from the end).

    Runs under the caller's autograd mode.
    """
    tower = as_vision_tower(model)
    images = check_images(tower, images)
    x = tower.embed(images)  # [B, N, W]
    batch, tokens, width = x.shape
    layers, heads = tower.num_layers, tower.heads
    dtype, device = x.dtype, x.device
    values = x.new_empty((batch, layers, tokens, width))  # [B, L, N, W]
    attention = x.new_empty((batch, layers, heads, tokens))  # [B, L, H, N]
    attention_out = x.new_empty((batch, layers, width))
    mlp_out = x.new_empty((batch, layers, width))
    ln_stats = torch.empty((4, batch, layers, tokens), dtype=dtype, device=device)
    mlp_tokens = x.new_empty((batch, layers, tokens, width)) if keep_mlp_tokens else None
    residual_tokens = x.new_empty((batch, layers + 1, tokens, width)) if keep_residual_tokens else None
    neurons: list[Tensor] = []
    neuron_layers = _neuron_layers(keep_neurons, layers)
    embedding = x[:, 0].clone()
    for layer, block in enumerate(tower.blocks):
        if residual_tokens is not None:
            residual_tokens[:, layer] = x
        y, ln_stats[0, :, layer], ln_stats[1, :, layer] = _normalize(block.norm_1, x)
        q, k, v = block.qkv(y)  # [B, H, N, Dh]
        values[:, layer].view(batch, tokens, heads, -1).copy_(v.transpose(1, 2))
        attention[:, layer] = block.class_attention(q, k)
        attended = block.project(block.attend(q, k, v))  # [B, N, W]
        attention_out[:, layer] = attended[:, 0]
        x = x + attended
        y, ln_stats[2, :, layer], ln_stats[3, :, layer] = _normalize(block.norm_2, x)
        mlp, hidden = block.mlp(y, keep_hidden=layer in neuron_layers)  # [B, N, W]
        gamma = block.ls_2()
        if gamma is not None:
            mlp = mlp * gamma
        if hidden is not None:
            neurons.append(hidden)
        mlp_out[:, layer] = mlp[:, 0]
        if mlp_tokens is not None:
            mlp_tokens[:, layer] = mlp
        x = x + mlp
    if residual_tokens is not None:
        residual_tokens[:, layers] = x
    residual = x[:, 0]  # [B, W]
    final = tower.final_norm()
    final_mean, final_std = _statistics(residual, final.eps)
    normalized = (residual - final_mean[:, None]) / final_std[:, None] * final.weight + final.bias
    output = normalized @ final.proj  # [B, E]
    head_dim = width // heads
    return Capture(
        values=values.unflatten(-1, (heads, head_dim)),
        attention=attention,
        embedding=embedding,
        attention_out=attention_out,
        mlp_out=mlp_out,
        residual=residual,
        final_mean=final_mean,
        final_std=final_std,
        ln1_mean=ln_stats[0],
        ln1_std=ln_stats[1],
        ln2_mean=ln_stats[2],
        ln2_std=ln_stats[3],
        output=output,
        grid=tower.grid_size,
        mlp_tokens=mlp_tokens,
        neurons=torch.stack(neurons, 1) if neurons else None,
        residual_tokens=residual_tokens,
        neuron_layers=tuple(neuron_layers) if neurons else None,
    )


def _neuron_layers(keep_neurons: bool | Sequence[int], num_layers: int) -> list[int]:
    """The layers whose MLP activations to keep, in model order."""
    if isinstance(keep_neurons, bool):
        return list(range(num_layers)) if keep_neurons else []
    chosen = set()
    for layer in keep_neurons:
        chosen.add(layer_index(layer, num_layers, "vision_kernels.clip.capture", "keep_neurons"))
    return sorted(chosen)
