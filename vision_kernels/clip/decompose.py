"""Text-based decomposition of CLIP's image representation (Gandelsman, Efros, Steinhardt, ICLR 2024).

The class-token residual stream after the last block is a sum
``r = e0 + sum_l attn_l + sum_l mlp_l`` with ``attn_l = ls_1 * (sum_h sum_i A[l, h, 0, i] W_O^h v[l, i, h] + b_O)``.
The image embedding ``z = (gamma * (r - mean(r)) / std(r) + beta) @ proj`` is linear in ``r`` once
the LayerNorm's mean and std are taken from the real ``r``, so it is exactly the sum of one term
per (layer, head, source token), one per MLP layer, the embedding term and a bias term.

Two centering conventions share out ``mean(r)``:

* ``"per_term"`` (default): every term is centred over the width by its own mean
  (``(t - mean(t)) * gamma / std(r) @ proj``). Each term depends on itself only; the bias term is
  ``beta @ proj`` plus the centred out-projection biases ``ls_1 * b_O`` of all layers.
* ``"even_split"``: the original TextSpan code's convention. The ``2L + 1`` intermediates
  (embedding, L attention layers, L MLPs) each subtract ``mean(r) / (2L + 1)`` and receive
  ``beta / (2L + 1)``; an attention layer's share, and its out-projection bias, are split evenly
  over its ``N * H`` (token, head) terms. The bias term is zero.

Both sum exactly to ``z``; with ``normalize=True`` every term is divided by ``|z|`` and they sum
to ``z / |z|`` (``encode_image(..., normalize=True)``).

The head terms come from the fused kernel :func:`vision_kernels.ops.attention_decomposition`
with the folded matrices of :mod:`vision_kernels.clip.folded`; nothing larger than the requested
output is formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from .. import _progress
from ..ops._checks import ArgCheck
from ..ops.attention_decomp import attention_decomposition
from ._checks import CONVENTIONS, check_convention, layer_index
from .capture import Capture, capture
from .folded import folded_head_matrices
from .towers import FUNCTION, VisionTower, as_vision_tower, check_images

__all__ = ["CONVENTIONS", "Decomposition", "decompose", "normalize_layers"]

OUTPUT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass
class Decomposition:
    """Terms whose sum is the image embedding, with the names of their axes.

    Attributes:
        heads: direct contributions of attention heads, axes :attr:`head_axes` (a subset of
            ``("image", "layer", "head", "token", "dim")``). Token 0 is the class token.
        head_axes: names of the axes of :attr:`heads`.
        layers: model layer index of each entry along the ``"layer"`` axis (or the layers summed).
        other_heads: ``[B, E]`` summed head terms of the layers not in :attr:`layers` (zero when all
            layers are listed), so that :meth:`total` stays exact for a layer subset.
        mlps: ``[B, L, E]`` MLP terms of every layer.
        embedding: ``[B, E]`` term of the class token entering the first block.
        bias: ``[B, E]`` bias term (zero in the even-split convention).
        output: ``[B, E]`` the image embedding (``/ |z|`` when normalized), recomputed by the forward.
        convention: ``"per_term"`` or ``"even_split"``.
        normalized: whether terms are divided by ``|z|``.
        grid: ``(rows, cols)`` of the patch tokens.
        capture: the forward pass's recorded quantities (:class:`Capture`), or None.
    """

    heads: Tensor
    head_axes: tuple[str, ...]
    layers: tuple[int, ...]
    other_heads: Tensor
    mlps: Tensor
    embedding: Tensor
    bias: Tensor
    output: Tensor
    convention: str
    normalized: bool
    grid: tuple[int, int]
    capture: Capture | None = None

    @property
    def axes(self) -> dict[str, tuple[str, ...]]:
        """Axis names of every term tensor."""
        return {
            "heads": self.head_axes,
            "other_heads": ("image", "dim"),
            "mlps": ("image", "layer", "dim"),
            "embedding": ("image", "dim"),
            "bias": ("image", "dim"),
            "output": ("image", "dim"),
        }

    def has_axis(self, name: str) -> bool:
        return name in self.head_axes

    def head_sum(self, keep: Sequence[str] = ("image", "dim")) -> Tensor:
        """:attr:`heads` summed over every axis not named in ``keep`` (order of :attr:`head_axes`)."""
        unknown = [k for k in keep if k not in self.head_axes]
        if unknown:
            raise ValueError(
                f"vision_kernels.clip.Decomposition.head_sum: argument 'keep' names axes {unknown} that the "
                f"head terms do not have; they have {self.head_axes}"
            )
        dims = [i for i, name in enumerate(self.head_axes) if name not in keep]
        return self.heads.sum(dim=dims) if dims else self.heads

    def total(self) -> Tensor:
        """Sum of all terms ``[B, E]`` (equals :attr:`output` up to rounding), accumulated in float64."""
        heads = self.head_sum(("image", "dim")).double()
        return (
            heads + self.other_heads.double() + self.mlps.double().sum(1) + self.embedding.double() + self.bias.double()
        )

    def layer_position(self, layer: int) -> int:
        """Position of model layer ``layer`` along the ``"layer"`` axis of :attr:`heads`."""
        if "layer" not in self.head_axes:
            raise ValueError("vision_kernels.clip.Decomposition: the head terms were summed over layers")
        try:
            return self.layers.index(layer)
        except ValueError:
            raise IndexError(
                f"vision_kernels.clip.Decomposition: layer {layer} was not decomposed; layers: {list(self.layers)}"
            ) from None

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Decomposition:
        """A copy with the term tensors converted (the capture is moved, not converted)."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = value.to(device=device, dtype=dtype)
        if self.capture is not None and device is not None:
            changes["capture"] = self.capture.to(device)
        return replace(self, **changes)


def normalize_layers(layers: int | Sequence[int] | None, num_layers: int, function: str = FUNCTION) -> list[int]:
    """Layer indices as non-negative ints (negative counts from the end); None means all layers."""
    if layers is None:
        return list(range(num_layers))
    check = ArgCheck(function)
    indices = check.integers(layers, "layers") if isinstance(layers, Sequence) else [check.integer(layers, "layers")]
    result = [layer_index(index, num_layers, function, "layers", position) for position, index in enumerate(indices)]
    if not result:
        raise ValueError(f"{function}: argument 'layers' must list at least one layer, got an empty list")
    return result


def _linearize(
    terms: Tensor, capture_: Capture, tower: VisionTower, convention: str, shares: int, norm: Tensor | None
) -> Tensor:
    """Width-space terms ``[B, ..., W]`` through the linearized final LayerNorm and projection ``[B, ..., E]``.

    ``shares``: in the even-split convention, how many equal shares of ``mean(r)`` and ``beta`` each
    term receives (``2L + 1`` for an intermediate).
    """
    final = tower.final_norm()
    extra = terms.dim() - 2
    std = capture_.final_std.view(-1, *([1] * (extra + 1)))  # [B, 1.., 1]
    if convention == "per_term":
        centred = terms - terms.mean(-1, keepdim=True)
        out = (centred * final.weight / std) @ final.proj
    else:
        mean = capture_.final_mean.view(-1, *([1] * (extra + 1)))
        out = ((terms - mean / shares) * final.weight / std + final.bias / shares) @ final.proj
    if norm is not None:
        out = out / norm.view(-1, *([1] * (extra + 1)))
    return out


def _decompose_batch(
    tower: VisionTower,
    images: Tensor,
    layers: list[int],
    *,
    per_layer: bool,
    per_head: bool,
    per_token: bool,
    normalize: bool,
    convention: str,
    dtype: torch.dtype,
    keep_capture: bool,
    capture_options: dict[str, bool],
) -> Decomposition:
    cap = capture(tower, images, **capture_options)
    num_layers, tokens, heads = tower.num_layers, tower.num_tokens, tower.heads
    final = tower.final_norm()
    output = cap.output
    norm = None
    scale = 1.0 / cap.final_std  # [B]
    if normalize:
        norm = output.norm(dim=-1).clamp_min(1e-12)  # [B], as torch.nn.functional.normalize
        scale = scale / norm
        output = output / norm[:, None]
    folded = folded_head_matrices(tower, centered=convention == "per_term")  # [L, H, Dh, E]
    offset = None
    intermediates = 2 * num_layers + 1
    if convention == "even_split":
        biases = torch.stack([_layer_bias(block, tower) for block in tower.blocks])  # [L, W]
        per_term_width = biases[None] / (tokens * heads)  # [1, L, W]
        per_term_width = per_term_width - cap.final_mean[:, None, None] / (intermediates * tokens * heads)
        offset = (per_term_width * final.weight / cap.final_std[:, None, None]) @ final.proj  # [B, L, E]
        offset = offset + (final.bias @ final.proj) / (intermediates * tokens * heads)
        if norm is not None:
            offset = offset / norm[:, None, None]
    heads_out = attention_decomposition(
        cap.values,
        cap.attention,
        folded,
        scale,
        offset,
        layers,
        keep_layers=per_layer,
        keep_heads=per_head,
        keep_tokens=per_token,
        out_dtype=dtype,
        check_finite=False,
    )  # [B, Lk, Hk, Nk, E]
    axes = ["image", "layer", "head", "token", "dim"]
    squeeze = [i for i, keep in ((1, per_layer), (2, per_head), (3, per_token)) if not keep]
    for dim in reversed(squeeze):
        heads_out = heads_out.squeeze(dim)
        del axes[dim]
    rest = sorted(set(range(num_layers)) - set(layers))
    if rest:
        other = attention_decomposition(
            cap.values, cap.attention, folded, scale, offset, rest,
            keep_layers=False, keep_heads=False, keep_tokens=False, out_dtype=dtype, check_finite=False,
        )[:, 0, 0, 0]  # fmt: skip
    else:
        other = output.new_zeros(output.shape, dtype=dtype)
    mlps = _linearize(cap.mlp_out, cap, tower, convention, intermediates, norm)  # [B, L, E]
    embedding = _linearize(cap.embedding, cap, tower, convention, intermediates, norm)  # [B, E]
    if convention == "per_term":
        biases = torch.stack([_layer_bias(block, tower) for block in tower.blocks]).sum(0)  # [W]
        bias = _linearize(biases.expand_as(cap.embedding), cap, tower, convention, 1, norm)
        beta = final.bias @ final.proj  # [E]
        bias = bias + (beta / norm[:, None] if norm is not None else beta)
    else:
        bias = torch.zeros_like(embedding)
    return Decomposition(
        heads=heads_out,
        head_axes=tuple(axes),
        layers=tuple(layers),
        other_heads=other,
        mlps=mlps.to(dtype),
        embedding=embedding.to(dtype),
        bias=bias.to(dtype),
        output=output.to(dtype),
        convention=convention,
        normalized=normalize,
        grid=tower.grid_size,
        capture=cap if keep_capture else None,
    )


def _layer_bias(block: object, tower: VisionTower) -> Tensor:
    """``ls_1 * b_O`` of one block ``[W]`` (zeros without an out-projection bias)."""
    bias = block.out_bias()  # type: ignore[attr-defined]
    if bias is None:
        return torch.zeros(tower.width, dtype=tower.dtype, device=tower.device)
    gamma = block.ls_1()  # type: ignore[attr-defined]
    return bias if gamma is None else bias * gamma


def _concatenate(parts: list[Decomposition]) -> Decomposition:
    first = parts[0]
    changes: dict[str, Any] = {}
    for f in fields(first):
        value = getattr(first, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = torch.cat([getattr(p, f.name) for p in parts])
    if first.capture is not None:
        cap_changes: dict[str, Any] = {}
        for f in fields(first.capture):
            value = getattr(first.capture, f.name)
            if isinstance(value, Tensor):
                cap_changes[f.name] = torch.cat([getattr(p.capture, f.name) for p in parts])
        changes["capture"] = replace(first.capture, **cap_changes)
    return replace(first, **changes)


def decompose(
    model: object,
    images: Tensor,
    *,
    layers: int | Sequence[int] | None = None,
    per_head: bool = True,
    per_token: bool = False,
    per_layer: bool = True,
    normalize: bool = False,
    convention: str = "per_term",
    dtype: torch.dtype | None = None,
    batch_size: int | None = None,
    requires_grad: bool = False,
    keep_capture: bool = True,
    keep_mlp_tokens: bool = False,
    keep_neurons: bool = False,
    keep_residual_tokens: bool = False,
) -> Decomposition:
    """Decompose the image embedding of a CLIP ViT into per-(layer, head[, token]) terms, MLP, embedding and bias terms.

    ``model.encode_image(images) == decomposition.total()`` up to float rounding (1e-5 relative in
    float32), for either convention, with or without ``normalize``. The forward pass is recomputed
    from the model's weights with inference semantics (no dropout or patch dropout, whatever
    ``model.training`` says).

    Args:
        model: open_clip CLIP model / ``VisionTransformer`` with class-token pooling, or a
            transformers ``CLIPVisionModelWithProjection`` / ``CLIPModel`` / ``CLIPVisionModel``.
        images: ``[B, C, H, W]`` preprocessed images at the model's resolution, on its device.
        layers: layers whose head terms are returned (default all; negative counts from the end).
            The other layers' head terms are summed into :attr:`Decomposition.other_heads`.
        per_head: keep the head axis (else summed over heads).
        per_token: keep the source-token axis (else summed over tokens).
        per_layer: keep the layer axis (else summed over ``layers``).
        normalize: divide every term by ``|z|`` so they sum to the normalized embedding.
        convention: ``"per_term"`` or ``"even_split"`` (see the module docstring).
        dtype: dtype of the terms, float32 / float64 / float16 / bfloat16 (default: the model's).
        batch_size: decompose this many images at a time (progress bar) and concatenate.
        requires_grad: run under autograd (gradients reach ``images``); default no_grad.
        keep_capture: attach the forward's :class:`Capture` to the result.
        keep_mlp_tokens, keep_neurons, keep_residual_tokens: record the optional per-token tensors.

    Returns:
        A :class:`Decomposition`. ``heads`` has axes ``("image", "layer", "head", "token", "dim")``
        minus the summed ones, e.g. ``[B, L, H, E]`` by default.

    Raises:
        TypeError: unsupported model type or non-tensor images; ValueError: a model configuration
        that cannot be decomposed exactly, images of the wrong size/channels/device or not finite, an unknown
        convention or dtype; IndexError: a layer index out of range.
    """
    tower = as_vision_tower(model)
    images = check_images(tower, images)
    finite = torch.isfinite(images).flatten(1).all(1)  # [B]
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"{FUNCTION}: argument 'images' must be finite, got NaN or Inf in {len(bad)} of {images.shape[0]} "
            f"images (first: image {bad[0]})"
        )
    check_convention(convention, FUNCTION)
    dtype = dtype or tower.dtype
    if dtype not in OUTPUT_DTYPES:
        raise TypeError(f"{FUNCTION}: argument 'dtype' must be float32, float64, float16 or bfloat16, got {dtype}")
    layer_list = normalize_layers(layers, tower.num_layers)
    options = {
        "per_layer": per_layer,
        "per_head": per_head,
        "per_token": per_token,
        "normalize": normalize,
        "convention": convention,
        "dtype": dtype,
        "keep_capture": keep_capture,
        "capture_options": {
            "keep_mlp_tokens": keep_mlp_tokens,
            "keep_neurons": keep_neurons,
            "keep_residual_tokens": keep_residual_tokens,
        },
    }
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"{FUNCTION}: argument 'batch_size' must be >= 1, got {batch_size}")
    chunks = [images] if batch_size is None or images.shape[0] <= batch_size else list(images.split(batch_size))
    parts = []
    with torch.set_grad_enabled(requires_grad):
        for chunk in _progress.progress(chunks, desc="decompose", enabled=None if len(chunks) > 1 else False):
            parts.append(_decompose_batch(tower, chunk, layer_list, **options))  # type: ignore[arg-type]
    return parts[0] if len(parts) == 1 else _concatenate(parts)
