"""Second-order effects of CLIP's MLP neurons (Gandelsman, Efros, Steinhardt, "Interpreting the Second-Order
Effects of Neurons in CLIP", 2024).

Neuron ``n`` of the MLP of layer ``l0`` writes ``act[t, n] * w_n`` into the residual stream at every token
``t`` (``w_n = ls_2 * W_out[:, n]``). Its *second-order effect* on an image's embedding is what this write
contributes through the *values* of the attention heads of the later layers ``l > l0``, with the attention
weights of the forward pass and every LayerNorm linearized at the forward pass's statistics (``ln_1`` of
layer ``l`` at token ``t``: mean and std of that token's residual; the final LayerNorm: those of the
class-token residual ``r``)::

    phi_n(I) = 1 / std(r) * sum_{l > l0} sum_h sum_t A[l, h, 0, t] act[t, n] / std_1[l, t]
                                                   * (W_V^h diag(gamma_1^l) C w_n) @ M[l, h]

with ``M[l, h]`` the head's folded output matrix (:func:`vision_kernels.clip.folded_head_matrices`) and
``C`` the per-term centering. It factorizes into per-image coefficients (from the class-token attention
rows, the ``ln_1`` stds and the activations) times image-independent directions
``d[l, h, n] = (W_V^h diag(gamma_1) C w_n) @ M[l, h]``: :func:`neuron_directions` builds the directions once
per model and layer, and the fused kernel :func:`vision_kernels.ops.second_order_effects` forms the
effects without any ``[tokens, neurons, width]`` tensor (the direct definition, kept as the reference
:func:`vision_kernels.reference.second_order.direct_second_order_effects`).

Two conventions, as for the first-order decomposition (:mod:`vision_kernels.clip.decompose`):

* ``"per_term"`` (default): every LayerNorm centres a term by its own mean (``C = I - 11^T / W``); the
  biases (MLP output, value and out-projection biases, LayerNorm betas) are not attributed to neurons.
* ``"even_split"``: the original code's convention. Each neuron's write also carries ``b_out / Nt`` (Nt:
  neurons of the layer); ``ln_1`` of layer ``l`` subtracts ``mean_1 / S1`` and adds ``beta_1 / S1`` with
  ``S1 = (1 + 2 l) Nt``; the value and out-projection biases enter divided by ``S1``; the final LayerNorm
  subtracts ``mean(r) / Sf`` and adds ``beta / Sf`` with ``Sf = (1 + 2 l)(1 + 2 L) Nt``. No centering
  ``C``. These shares are the same for every neuron, so they form one per-image offset.

With ``normalize=True`` (default, as in the paper) the effects are divided by ``|z|``, the norm of the
image embedding, so they are in the units of the normalized embedding used for classification (the
original code also multiplies them by 100).

The neuron statistics of the paper (:class:`NeuronStatistics`): on a set of images, each neuron's mean
effect, its ``top_k`` largest centred effects (their smallest norm is the neuron's *significance
threshold*), and its *principal direction*: the first principal component of the top ``top_k`` centred
effects, its sign chosen so that most of them project positively. :meth:`NeuronStatistics.significant_fraction`
measures on other images how often an effect exceeds the threshold (about 2% for most neurons in the paper),
and :func:`ablate_neuron_effects` reproduces the paper's ablations (mean-ablating all, the significant,
or the insignificant effects, or keeping only the principal component).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import _progress
from ..ops._checks import ArgCheck
from ..ops.second_order import second_order_effects
from ..runs import distributed as runs_distributed
from ._checks import check_convention, layer_index
from .capture import Capture, capture
from .folded import folded_head_matrices
from .neuron_candidates import Candidates, centred_norms, exchange_across_ranks
from .neuron_candidates import merge as merge_candidates
from .towers import VisionTower, as_vision_tower, check_images

__all__ = [
    "NeuronDirections",
    "NeuronStatistics",
    "ablate_neuron_effects",
    "collect_neuron_statistics",
    "neuron_directions",
    "neuron_effects",
    "neuron_statistics",
    "statistics_from_candidates",
]

FUNCTION = "vision_kernels.clip.neuron_effects"


@dataclass
class NeuronDirections:
    """Image-independent directions of the second-order effects of one MLP layer's neurons.

    Attributes:
        directions: ``[S, H, Nn, E]`` ``(W_V^h diag(gamma_1) C w_n) @ M[l_s, h]`` per later layer ``l_s``, head
            and neuron (memory laid out neuron-major, so one neuron's ``[S * H, E]`` block is contiguous).
        layer: the MLP layer ``l0``.
        neurons: ``[Nn]`` the neurons' indices in the layer.
        later_layers: the S later layers whose heads carry the effects.
        convention: ``"per_term"`` or ``"even_split"``.
        total_neurons: neurons of the layer (the even split's ``Nt``).
        split: even-split constants per later layer (empty for ``per_term``).
    """

    directions: Tensor
    layer: int
    neurons: Tensor
    later_layers: tuple[int, ...]
    convention: str
    total_neurons: int
    split: dict[str, Tensor] = field(default_factory=dict)


def _normalize_layer(layer: int, num_layers: int, function: str) -> int:
    """An MLP layer index (negative counts from the end) that has at least one later layer."""
    index = ArgCheck(function).integer(layer, "layer")
    if not -num_layers <= index < num_layers or index % num_layers == num_layers - 1:
        raise IndexError(
            f"{function}: argument 'layer' must be an MLP layer with at least one later layer, in "
            f"[{-num_layers}, {num_layers - 1}) except {-1} for a model with {num_layers} layers, got {layer}"
        )
    return index % num_layers


def _normalize_later(later_layers: Sequence[int] | None, layer: int, num_layers: int, function: str) -> list[int]:
    if later_layers is None:
        return list(range(layer + 1, num_layers))
    result = []
    for position, value in enumerate(later_layers):
        index = layer_index(value, num_layers, function, "later_layers", position)
        if not layer < index:
            raise IndexError(
                f"{function}: argument 'later_layers' must hold layers after the MLP layer {layer} and below "
                f"{num_layers}, got {value} at position {position}"
            )
        result.append(index)
    if not result:
        raise ValueError(f"{function}: argument 'later_layers' must list at least one layer, got an empty list")
    return result


def _normalize_neurons(neurons: Sequence[int] | Tensor | None, total: int, function: str) -> Tensor:
    if neurons is None:
        return torch.arange(total)
    index = torch.as_tensor(neurons, dtype=torch.long).reshape(-1).cpu()
    if index.numel() == 0:
        raise ValueError(f"{function}: argument 'neurons' must list at least one neuron, got an empty list")
    bad = (index < 0) | (index >= total)
    if bool(bad.any()):
        position = int(bad.nonzero()[0])
        raise IndexError(
            f"{function}: argument 'neurons' must hold neuron indices in [0, {total}) (the MLP width), got "
            f"{int(index[position])} at position {position}"
        )
    return index


def _affine(norm: torch.nn.Module, width: int) -> tuple[Tensor, Tensor]:
    """(gamma, beta) of a LayerNorm as float64 (ones / zeros when it has no affine parameters)."""
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    gamma = weight.detach().double() if weight is not None else torch.ones(width, dtype=torch.float64)
    beta = bias.detach().double() if bias is not None else torch.zeros_like(gamma)
    return gamma, beta


# One cache entry per model: the last directions built (they can be large; rebuilt when a weight changes).
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _stamp(tower: VisionTower) -> tuple:
    return tuple((id(p), p._version, p.device, p.dtype) for p in tower.module.parameters())


@torch.no_grad()
def neuron_directions(
    model: object,
    layer: int,
    neurons: Sequence[int] | Tensor | None = None,
    *,
    later_layers: Sequence[int] | None = None,
    convention: str = "per_term",
    dtype: torch.dtype | None = None,
) -> NeuronDirections:
    """The image-independent directions ``[S, H, Nn, E]`` of the second-order effects of MLP ``layer``'s neurons.

    ``d[s, h, n] = (W_V^h diag(gamma_1) C (ls_2 * W_out[:, n])) @ M[l_s, h]`` for each later layer ``l_s``
    (``C`` the per-term centering, identity for ``"even_split"``), computed in float64 and stored in ``dtype``
    (default: the model's). The last directions built for a model are cached.

    Args:
        model: open_clip CLIP / ViT tower or transformers CLIP vision model.
        layer: the MLP layer (negative counts from the end); it needs at least one later layer.
        neurons: indices of the neurons (default: all of the layer).
        later_layers: the later layers whose heads carry the effect (default: all after ``layer``).
        convention: ``"per_term"`` or ``"even_split"``.
        dtype: storage dtype of the directions (float16/bfloat16 halve their memory).

    Raises:
        IndexError: a layer or neuron index out of range; ValueError: an unknown convention, a model whose
        MLP has a LayerNorm between the neurons and the output projection.
    """
    function = "vision_kernels.clip.neuron_directions"
    tower = as_vision_tower(model)
    check_convention(convention, function)
    layer = _normalize_layer(layer, tower.num_layers, function)
    later = _normalize_later(later_layers, layer, tower.num_layers, function)
    source = tower.blocks[layer]
    total = source.mlp_width()
    index = _normalize_neurons(neurons, total, function)
    dtype = dtype or tower.dtype
    key = (_stamp(tower), layer, tuple(index.tolist()), tuple(later), convention, dtype)
    with _cache_lock:
        entry = _cache.get(tower.module)
        if entry is not None and entry[0] == key:
            return entry[1]
    result = _build_directions(tower, layer, index, later, convention, dtype)
    with _cache_lock:
        _cache[tower.module] = (key, result)
    return result


def _build_directions(
    tower: VisionTower, layer: int, index: Tensor, later: list[int], convention: str, dtype: torch.dtype
) -> NeuronDirections:
    source = tower.blocks[layer]
    device = tower.device
    writes = source.mlp_out_weight().detach().double()[:, index.to(device)]  # [W, Nn]
    gamma_2 = source.ls_2()
    if gamma_2 is not None:
        writes = writes * gamma_2.detach().double()[:, None]
    if convention == "per_term":
        writes = writes - writes.mean(0, keepdim=True)  # C w_n
    folded = folded_head_matrices(tower, centered=convention == "per_term").double()  # [L, H, Dh, E]
    heads, head_dim, embed = folded.shape[1], folded.shape[2], folded.shape[3]
    out = torch.empty((index.numel(), len(later), heads, embed), dtype=dtype, device=device)  # [Nn, S, H, E]
    for s, later_layer in enumerate(later):
        block = tower.blocks[later_layer]
        gamma_1, _ = _affine(block.norm_1, writes.shape[0])
        values = block.value_weight().detach().double() @ (gamma_1.to(device)[:, None] * writes)  # [H * Dh, Nn]
        values = values.view(heads, head_dim, -1)  # [H, Dh, Nn]
        out[:, s] = torch.einsum("hdn,hde->nhe", values, folded[later_layer]).to(dtype)
    split = _split_constants(tower, layer, later, folded) if convention == "even_split" else {}
    return NeuronDirections(
        directions=out.permute(1, 2, 0, 3),  # [S, H, Nn, E] view of the neuron-major buffer
        layer=layer,
        neurons=index,
        later_layers=tuple(later),
        convention=convention,
        total_neurons=source.mlp_width(),
        split=split,
    )


def _split_constants(tower: VisionTower, layer: int, later: list[int], folded: Tensor) -> dict[str, Tensor]:
    """Per later layer, what the even split adds to every neuron's effect (see :func:`_split_offset`)."""
    source = tower.blocks[layer]
    width = tower.width
    bias_out = source.mlp_out_bias()
    bias_out = torch.zeros(width, dtype=torch.float64) if bias_out is None else bias_out.detach().double().cpu()
    gamma_2 = source.ls_2()
    if gamma_2 is not None:
        bias_out = bias_out * gamma_2.detach().double().cpu()
    final = tower.final_norm()
    gamma_f = final.weight.detach().double().cpu()
    proj = final.proj.detach().double().cpu()
    rows: dict[str, list[Tensor]] = {k: [] for k in ("written_bias", "gamma", "beta", "out_bias")}
    for later_layer in later:
        block = tower.blocks[later_layer]
        gamma_1, beta_1 = (t.cpu() for t in _affine(block.norm_1, width))
        values = block.value_weight().detach().double().cpu()  # [H * Dh, W]
        value_bias = block.value_bias()
        value_bias = torch.zeros(values.shape[0], dtype=torch.float64) if value_bias is None else value_bias
        rows["written_bias"].append(values @ (gamma_1 * bias_out))  # W_V (gamma_1 * b_out)
        rows["gamma"].append(values @ gamma_1)  # W_V gamma_1: the mean's direction
        rows["beta"].append(values @ beta_1 + value_bias.detach().double().cpu())  # W_V beta_1 + b_V
        out_bias = block.out_bias()
        out_bias = torch.zeros(width, dtype=torch.float64) if out_bias is None else out_bias.detach().double().cpu()
        gamma_1_scale = block.ls_1()
        if gamma_1_scale is not None:
            out_bias = out_bias * gamma_1_scale.detach().double().cpu()
        rows["out_bias"].append((out_bias * gamma_f) @ proj)  # [E]
    constants = {k: torch.stack(v) for k, v in rows.items()}  # [S, H * Dh] or [S, E]
    constants["folded"] = folded[later].cpu()  # [S, H, Dh, E] without centering
    constants["gamma_proj"] = gamma_f @ proj  # [E]
    constants["beta_proj"] = final.bias.detach().double().cpu() @ proj  # [E]
    return constants


def _split_offset(directions: NeuronDirections, cap: Capture, num_layers: int) -> Tensor:
    """``[B, E]`` the even split's shares, the same for every neuron (float64)."""
    constants = {k: v.to(cap.attention.device) for k, v in directions.split.items()}
    total = directions.total_neurons
    mean_f = cap.final_mean.double()[:, None]  # [B, 1]
    std_f = cap.final_std.double()[:, None]
    offset = torch.zeros(cap.attention.shape[0], constants["gamma_proj"].shape[0], dtype=torch.float64)
    offset = offset.to(cap.attention.device)
    heads = cap.attention.shape[2]
    for s, later_layer in enumerate(directions.later_layers):
        shares = (1 + 2 * later_layer) * total
        final_shares = (1 + 2 * later_layer) * (1 + 2 * num_layers) * total
        mean_1 = cap.ln1_mean[:, later_layer].double()[..., None]  # [B, N, 1]
        std_1 = cap.ln1_std[:, later_layer].double()[..., None]
        per_token = (constants["written_bias"][s] / total - constants["gamma"][s] * mean_1 / shares) / std_1
        per_token = per_token + constants["beta"][s] / shares  # [B, N, H * Dh]
        per_token = per_token.unflatten(-1, (heads, -1))  # [B, N, H, Dh]
        attended = torch.einsum("bht,bthd->bhd", cap.attention[:, later_layer].double(), per_token)  # [B, H, Dh]
        offset += torch.einsum("bhd,hde->be", attended, constants["folded"][s]) / std_f
        offset += constants["out_bias"][s] / shares / std_f
        offset += (constants["beta_proj"] - constants["gamma_proj"] * mean_f / std_f) / final_shares
    return offset


def _chunks(images: Tensor, batch_size: int | None) -> list[Tensor]:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"{FUNCTION}: argument 'batch_size' must be >= 1, got {batch_size}")
    return [images] if batch_size is None or images.shape[0] <= batch_size else list(images.split(batch_size))


def _batch_effects(
    tower: VisionTower, images: Tensor, directions: NeuronDirections, normalize: bool, out_dtype: torch.dtype
) -> Tensor:
    """``[B, Nn, E]`` effects of one batch of checked images."""
    cap = capture(tower, images, keep_neurons=[directions.layer])
    activations = cap.layer_neurons(directions.layer)  # [B, N, hidden]
    if directions.neurons.numel() != activations.shape[-1] or not bool(
        (directions.neurons == torch.arange(activations.shape[-1])).all()
    ):
        activations = activations[..., directions.neurons.to(activations.device)]  # [B, N, Nn]
    dtype = directions.directions.dtype
    scale = 1.0 / cap.final_std.double()  # [B]
    norm = cap.output.double().norm(dim=-1).clamp_min(1e-12) if normalize else None
    if norm is not None:
        scale = scale / norm
    offset = None
    if directions.convention == "even_split":
        offset = _split_offset(directions, cap, tower.num_layers)
        if norm is not None:
            offset = offset / norm[:, None]
        offset = offset.to(dtype)
    return second_order_effects(
        cap.attention.to(dtype),
        cap.ln1_std.to(dtype),
        activations.to(dtype),
        directions.directions,
        scale.to(dtype),
        offset,
        list(directions.later_layers),
        out_dtype=out_dtype,
        check_finite=False,
    )


def neuron_effects(
    model: object,
    images: Tensor,
    layer: int,
    neurons: Sequence[int] | Tensor | None = None,
    *,
    later_layers: Sequence[int] | None = None,
    convention: str = "per_term",
    normalize: bool = True,
    directions: NeuronDirections | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Second-order effects ``[K, Nn, E]`` of MLP ``layer``'s neurons on the embeddings of ``images``.

    ``phi_n(I) = 1/std(r) sum_{l in later_layers} sum_h coef[l, h, n](I) d[l, h, n]`` with
    ``coef[l, h, n] = sum_t A[l, h, 0, t] act[t, n] / std_1[l, t]`` (see the module docstring), divided by
    ``|z|`` when ``normalize``. Computed by the fused kernel :func:`vision_kernels.ops.second_order_effects`.

    Args:
        model: open_clip CLIP / ViT tower or transformers CLIP vision model.
        images: ``[K, C, H, W]`` preprocessed images on the model's device.
        layer: the MLP layer (negative counts from the end); it needs at least one later layer.
        neurons: neuron indices (default: all of the layer).
        later_layers: later layers whose heads carry the effect (default: all after ``layer``).
        convention: ``"per_term"`` or ``"even_split"``.
        normalize: divide by the norm of the image embedding (the paper's units).
        directions: precomputed :func:`neuron_directions` (must match layer, neurons, later layers and
            convention); built (and cached) when omitted.
        batch_size: images per forward pass (progress bar over batches).
        dtype: dtype of the effects (default: the directions' dtype).
        out: optional preallocated ``[K, Nn, E]`` tensor (e.g. a memory-mapped file) to write into.

    Raises:
        IndexError: layer or neuron index out of range; ValueError: unknown convention, mismatched
        ``directions`` or ``out``, images of the wrong size/device.
    """
    tower = as_vision_tower(model)
    images = check_images(tower, images, FUNCTION)
    if directions is None:
        directions = neuron_directions(
            tower, layer, neurons, later_layers=later_layers, convention=convention, dtype=dtype
        )
    else:
        _check_directions(directions, tower, layer, neurons, later_layers, convention)
    dtype = dtype or directions.directions.dtype
    shape = (images.shape[0], directions.neurons.numel(), directions.directions.shape[3])
    if out is None:
        out = torch.empty(shape, dtype=dtype, device=images.device)
    elif tuple(out.shape) != shape:
        raise ValueError(f"{FUNCTION}: argument 'out' must have shape {list(shape)}, got {list(out.shape)}")
    chunks = _chunks(images, batch_size)
    start = 0
    with torch.no_grad():
        for chunk in _progress.progress(chunks, desc="neuron effects", enabled=None if len(chunks) > 1 else False):
            out[start : start + chunk.shape[0]] = _batch_effects(tower, chunk, directions, normalize, dtype)
            start += chunk.shape[0]
    return out


def _check_directions(
    directions: NeuronDirections,
    tower: VisionTower,
    layer: int,
    neurons: Sequence[int] | Tensor | None,
    later_layers: Sequence[int] | None,
    convention: str,
) -> None:
    layer = _normalize_layer(layer, tower.num_layers, FUNCTION)
    later = _normalize_later(later_layers, layer, tower.num_layers, FUNCTION)
    index = _normalize_neurons(neurons, tower.blocks[layer].mlp_width(), FUNCTION)
    same = (
        directions.layer == layer
        and directions.later_layers == tuple(later)
        and directions.convention == convention
        and torch.equal(directions.neurons, index)
    )
    if not same:
        raise ValueError(
            f"{FUNCTION}: argument 'directions' was built for layer {directions.layer}, later layers "
            f"{list(directions.later_layers)}, {directions.neurons.numel()} neurons, convention "
            f"{directions.convention!r}; the call asks for layer {layer}, later layers {later}, {index.numel()} "
            f"neurons, convention {convention!r}"
        )


# ---------------------------------------------------------------- statistics


@dataclass
class NeuronStatistics:
    """Per-neuron statistics of second-order effects over a set of images (the paper's Sec. 4).

    Attributes:
        mean: ``[Nn, E]`` mean effect over the images (float64).
        top_norms: ``[Nn, k]`` the ``k`` largest norms of the centred effects, descending (float64).
        top_images: ``[Nn, k]`` positions in the image set of those effects.
        principal: ``[Nn, E]`` unit first principal component of the top ``k`` centred effects, signed so that
            more than half of them project positively (zero for a neuron whose effects are all equal).
        explained: ``[Nn]`` fraction of the top effects' energy along the principal direction.
        count: number of images.
        layer: the MLP layer (None when unknown); neurons: ``[Nn]`` their indices (None when unknown).
    """

    mean: Tensor
    top_norms: Tensor
    top_images: Tensor
    principal: Tensor
    explained: Tensor
    count: int
    layer: int | None = None
    neurons: Tensor | None = None

    @property
    def top_k(self) -> int:
        return int(self.top_norms.shape[1])

    @property
    def thresholds(self) -> Tensor:
        """``[Nn]`` significance thresholds: the ``k``-th largest centred-effect norm of each neuron."""
        return self.top_norms[:, -1]

    def _check(self, effects: Tensor, function: str) -> None:
        if effects.dim() != 3 or tuple(effects.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(
                f"{function}: argument 'effects' must be [K, {self.mean.shape[0]}, {self.mean.shape[1]}] "
                f"(the statistics' neurons and embedding size), got {list(effects.shape)}"
            )

    def significant(self, effects: Tensor) -> Tensor:
        """``[K, Nn]`` whether ``|effect - mean| > threshold`` for each image and neuron (computed in float64)."""
        self._check(effects, "vision_kernels.clip.NeuronStatistics.significant")
        mean = self.mean.to(effects.device, torch.float64)
        norms = (effects.double() - mean).norm(dim=-1)  # [K, Nn]
        return norms > self.thresholds.to(effects.device, torch.float64)

    def significant_fraction(self, effects: Tensor) -> Tensor:
        """``[Nn]`` fraction of the images of ``effects [K, Nn, E]`` where each neuron's effect is significant."""
        return self.significant(effects).float().mean(0)

    def to(self, device: torch.device | str) -> NeuronStatistics:
        moved = {
            k: (v.to(device) if isinstance(v, Tensor) else v)
            for k, v in self.__dict__.items()
            if k not in ("count", "layer")
        }
        return NeuronStatistics(count=self.count, layer=self.layer, **moved)


def _principal_directions(top: Tensor) -> tuple[Tensor, Tensor]:
    """First principal component ``[c, E]`` (majority sign) and its energy fraction ``[c]`` of ``top [c, k, E]``."""
    data = top.double()
    gram = data @ data.transpose(1, 2)  # [c, k, k]
    values, vectors = torch.linalg.eigh(gram)  # ascending
    largest = values[:, -1].clamp_min(0)  # [c]
    direction = torch.einsum("ck,cke->ce", vectors[:, :, -1], data)  # [c, E], norm sqrt(largest)
    norm = direction.norm(dim=-1, keepdim=True)
    direction = torch.where(norm > 0, direction / norm.clamp_min(1e-300), torch.zeros_like(direction))
    positive = (torch.einsum("cke,ce->ck", data, direction) > 0).sum(1)  # [c]
    sign = torch.where(positive > data.shape[1] // 2, 1.0, -1.0).to(direction.dtype)
    total = values.clamp_min(0).sum(1)
    explained = torch.where(total > 0, largest / total.clamp_min(1e-300), torch.zeros_like(total))
    return direction * sign[:, None], explained


def _check_top_k(top_k: int, count: int, function: str) -> None:
    if not 1 <= top_k <= count:
        raise ValueError(f"{function}: argument 'top_k' must be in [1, {count}] (the number of images), got {top_k}")


def neuron_statistics(
    effects: Tensor,
    *,
    top_k: int = 100,
    layer: int | None = None,
    neurons: Tensor | None = None,
    max_elements: int = 1 << 26,
) -> NeuronStatistics:
    """:class:`NeuronStatistics` of precomputed effects ``[K, Nn, E]`` (a tensor, or a memory-mapped one).

    Neurons are processed in chunks of at most ``max_elements`` effect values (progress bar), so ``effects``
    may be far larger than memory when it is a memory-mapped tensor.
    """
    function = "vision_kernels.clip.neuron_statistics"
    if not isinstance(effects, Tensor) or effects.dim() != 3:
        got = list(effects.shape) if isinstance(effects, Tensor) else type(effects).__name__
        raise ValueError(f"{function}: argument 'effects' must be a [K, Nn, E] tensor, got {got}")
    count, total, embed = effects.shape
    _check_top_k(top_k, count, function)
    chunk = max(1, min(total, max_elements // max(1, count * embed)))
    parts: dict[str, list[Tensor]] = {k: [] for k in ("mean", "norms", "images", "principal", "explained")}
    starts = list(range(0, total, chunk))
    for start in _progress.progress(starts, desc="neuron statistics", enabled=None if len(starts) > 1 else False):
        values = effects[:, start : start + chunk].double()  # [K, c, E]
        mean = values.mean(0)  # [c, E]
        centred = values - mean
        norms, images = centred.norm(dim=-1).topk(top_k, dim=0)  # [k, c]
        top = centred.gather(0, images[:, :, None].expand(-1, -1, embed)).transpose(0, 1)  # [c, k, E]
        principal, explained = _principal_directions(top)
        for key, value in (("mean", mean), ("norms", norms.T), ("images", images.T)):
            parts[key].append(value)
        parts["principal"].append(principal)
        parts["explained"].append(explained)
    return NeuronStatistics(
        mean=torch.cat(parts["mean"]),
        top_norms=torch.cat(parts["norms"]),
        top_images=torch.cat(parts["images"]),
        principal=torch.cat(parts["principal"]).float(),
        explained=torch.cat(parts["explained"]).float(),
        count=count,
        layer=layer,
        neurons=neurons,
    )


def _reiterable(images: Tensor | Iterable, batch_size: int, function: str) -> Iterable:
    if isinstance(images, Tensor):
        return list(images.split(batch_size))
    if iter(images) is images:  # type: ignore[call-overload]
        raise TypeError(
            f"{function}: argument 'images' must be a tensor or a re-iterable of batches (list, DataLoader): the "
            "statistics take two passes, got a one-shot iterator"
        )
    return images


def _batch_images(batch: object) -> Tensor:
    """The images of a batch: a tensor, or the first element of a (images, labels, ...) tuple."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch  # type: ignore[return-value]


def _effects_of(
    tower: VisionTower, batch: object, directions: NeuronDirections, normalize: bool, function: str
) -> Tensor:
    """``[B, Nn, E]`` float32 effects of one batch (tensor or ``(images, ...)`` tuple) of finite images."""
    images = check_images(tower, _batch_images(batch), function)
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{function}: argument 'images' must be finite, got NaN/Inf pixel values")
    return _batch_effects(tower, images, directions, normalize, torch.float32)


def statistics_from_candidates(
    mean: Tensor, candidates: Candidates, count: int, directions: NeuronDirections
) -> NeuronStatistics:
    """:class:`NeuronStatistics` from the mean ``[Nn, E]`` and the ``k`` best candidates of every neuron."""
    centred = candidates.effects.to(mean.device).double() - mean  # [k, Nn, E]
    principal, explained = _principal_directions(centred.transpose(0, 1))
    return NeuronStatistics(
        mean=mean,
        top_norms=candidates.norms.T.contiguous().to(mean.device),
        top_images=candidates.positions.T.contiguous().to(mean.device),
        principal=principal.float(),
        explained=explained.float(),
        count=count,
        layer=directions.layer,
        neurons=directions.neurons,
    )


@torch.no_grad()
def collect_neuron_statistics(
    model: object,
    images: Tensor | Iterable,
    layer: int,
    neurons: Sequence[int] | Tensor | None = None,
    *,
    top_k: int = 100,
    batch_size: int = 32,
    later_layers: Sequence[int] | None = None,
    convention: str = "per_term",
    normalize: bool = True,
    distributed: bool = True,
) -> NeuronStatistics:
    """:class:`NeuronStatistics` of MLP ``layer``'s neurons over an image set, without storing all effects.

    Two passes over ``images`` (a ``[K, C, H, W]`` tensor, split into ``batch_size`` batches, or a
    re-iterable of batches such as a DataLoader yielding ``(images, labels)``): the first accumulates each
    neuron's effect sum ``sum_I phi_n(I)`` (float64), the second keeps each neuron's ``top_k`` largest centred
    effects ``|phi_n(I) - mean_n|`` (ties to the earlier image). Memory: the running candidates
    ``[top_k, Nn, E]`` plus one batch's effects ``[batch, Nn, E]``.

    Under torch.distributed (``distributed=True`` and an initialized process group of several ranks) every
    rank passes its own images: the sums and counts are all_reduced, each rank keeps its own ``top_k``
    candidates per neuron, and only those candidates are exchanged to select the global ones
    (:mod:`vision_kernels.clip.neuron_candidates`). The image positions in ``top_images`` then count the
    images of rank 0 first, then rank 1's, ...: the result equals one process run on the ranks' images
    concatenated in rank order (to float64 rounding of the sums).
    """
    function = "vision_kernels.clip.collect_neuron_statistics"
    tower = as_vision_tower(model)
    batches = _reiterable(images, batch_size, function)
    directions = neuron_directions(tower, layer, neurons, later_layers=later_layers, convention=convention)
    ranks = runs_distributed.current() if distributed else runs_distributed.Ranks()
    neurons_count, embed = directions.neurons.numel(), directions.directions.shape[-1]
    total = torch.zeros((neurons_count, embed), dtype=torch.float64)
    count = 0
    for batch in _progress.progress(batches, desc="neuron statistics (mean)"):
        effects = _effects_of(tower, batch, directions, normalize, function)  # [B, Nn, E]
        total += effects.double().sum(0).cpu()
        count += effects.shape[0]
    counts = torch.zeros(ranks.world, dtype=torch.int64)
    counts[ranks.rank] = count
    if ranks.world > 1:
        runs_distributed.all_reduce_sum(total)
        runs_distributed.all_reduce_sum(counts)
    overall = int(counts.sum())
    if overall == 0:
        raise ValueError(f"{function}: argument 'images' holds no image")
    _check_top_k(top_k, overall, function)
    mean = total / overall  # [Nn, E]
    seen = int(counts[: ranks.rank].sum())  # position of this rank's first image
    local: Candidates | None = None
    for batch in _progress.progress(batches, desc="neuron statistics (top effects)"):
        effects = _effects_of(tower, batch, directions, normalize, function).cpu()  # [B, Nn, E]
        norms = centred_norms(effects, mean)  # [B, Nn]
        positions = torch.arange(seen, seen + effects.shape[0])[:, None].expand_as(norms)
        seen += effects.shape[0]
        local = merge_candidates(local, norms, positions, effects, top_k)
    best = exchange_across_ranks(local, top_k, neurons_count, embed) if ranks.world > 1 else local
    assert best is not None  # at least one image was seen
    device = tower.device
    return statistics_from_candidates(mean.to(device), best, overall, directions)


ABLATIONS = ("all", "significant", "insignificant", "principal")


def ablate_neuron_effects(
    embeddings: Tensor, effects: Tensor, statistics: NeuronStatistics, *, mode: str = "all"
) -> Tensor:
    """Embeddings ``[B, E]`` with the neurons' second-order effects ``[B, Nn, E]`` ablated (the paper's Sec. 4.2).

    With ``c = effect - mean`` per neuron:

    * ``"all"``: every effect replaced by its mean, ``z - sum_n c_n``;
    * ``"significant"``: only significant effects (``|c| > threshold``) replaced by their mean;
    * ``"insignificant"``: only insignificant effects replaced (the paper: accuracy barely changes);
    * ``"principal"``: every effect replaced by ``mean + (c . p) p`` (its principal component only).

    ``embeddings`` must be in the effects' units: ``z / |z|`` for effects computed with ``normalize=True``.
    """
    function = "vision_kernels.clip.ablate_neuron_effects"
    if mode not in ABLATIONS:
        raise ValueError(f"{function}: argument 'mode' must be one of {ABLATIONS}, got {mode!r}")
    statistics._check(effects, function)
    if embeddings.dim() != 2 or embeddings.shape != (effects.shape[0], effects.shape[2]):
        raise ValueError(
            f"{function}: argument 'embeddings' must be [{effects.shape[0]}, {effects.shape[2]}] like the effects, "
            f"got {list(embeddings.shape)}"
        )
    centred = (effects.double() - statistics.mean.to(effects.device, torch.float64)).float()  # [B, Nn, E]
    if mode == "all":
        removed = centred
    elif mode == "principal":
        principal = statistics.principal.to(effects.device, torch.float32)  # [Nn, E]
        removed = centred - (centred * principal).sum(-1, keepdim=True) * principal
    else:
        significant = statistics.significant(effects)[..., None]  # [B, Nn, 1]
        removed = centred * (significant if mode == "significant" else ~significant)
    return (embeddings.float() - removed.sum(1)).to(embeddings.dtype)
