"""Mean-ablation of decomposition terms and zero-shot accuracy (Gandelsman et al., Sec. 3.2).

Mean-ablating a term replaces it, for every image, by its mean over a reference image set:

    z_ablated = z - sum_{t in chosen} t(image) + sum_{t in chosen} mean_ref t

The repaired embeddings show how much a model's zero-shot accuracy depends on the chosen heads,
attention layers or MLPs (e.g. mean-ablating all MLPs barely changes ImageNet accuracy in the
paper, while ablating the last attention layers does).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

from ..ops._checks import ArgCheck
from .decompose import Decomposition

__all__ = ["mean_ablate", "zero_shot_accuracy", "mean_ablation_accuracy"]

FUNCTION = "vision_kernels.clip.mean_ablate"


def _head_terms(decomposition: Decomposition, need_heads: bool) -> Tensor:
    """Head terms summed over tokens, ``[B, S, H, E]`` (or ``[B, S, E]`` without a head axis)."""
    axes = decomposition.head_axes
    if "layer" not in axes:
        raise ValueError(
            f"{FUNCTION}: the decomposition summed its head terms over layers; decompose with per_layer=True"
        )
    if need_heads and "head" not in axes:
        raise ValueError(
            f"{FUNCTION}: the decomposition summed over heads; decompose with per_head=True to ablate heads"
        )
    keep = [a for a in axes if a != "token"]
    return decomposition.head_sum(keep)


def _same_layout(decomposition: Decomposition, reference: Decomposition) -> None:
    if reference.head_axes != decomposition.head_axes or reference.layers != decomposition.layers:
        raise ValueError(
            f"{FUNCTION}: argument 'reference' must be decomposed like 'decomposition' (axes "
            f"{decomposition.head_axes}, layers {list(decomposition.layers)}), got axes {reference.head_axes}, "
            f"layers {list(reference.layers)}"
        )
    if reference.convention != decomposition.convention or reference.normalized != decomposition.normalized:
        raise ValueError(f"{FUNCTION}: argument 'reference' must use the same convention and normalization")


def mean_ablate(
    decomposition: Decomposition,
    reference: Decomposition | None = None,
    *,
    heads: Iterable[tuple[int, int]] = (),
    layers: Iterable[int] = (),
    mlps: Iterable[int] | str = (),
    embedding: bool = False,
) -> Tensor:
    """Embeddings ``[B, E]`` with the chosen terms replaced by their mean over ``reference``.

    Args:
        decomposition: the images to repair (head terms per layer; per head to ablate single heads).
        reference: decomposition of the reference image set (same layers and axes); default: the
            images themselves.
        heads: ``(layer, head)`` pairs, model layer indices.
        layers: attention layers whose heads are all ablated (model layer indices).
        mlps: MLP layers to ablate, or ``"all"``.
        embedding: also ablate the class-token embedding term.

    Raises:
        ValueError: axes needed for the ablation were summed away, or ``reference`` differs in layout;
        IndexError: a layer that was not decomposed or a head out of range.
    """
    reference = decomposition if reference is None else reference
    if reference is not decomposition:
        _same_layout(decomposition, reference)
    check = ArgCheck(FUNCTION)
    heads = [(check.integer(layer, "heads"), check.integer(head, "heads")) for layer, head in heads]
    layers = check.integers(layers, "layers")
    num_layers = decomposition.mlps.shape[1]
    mlp_layers = list(range(num_layers)) if mlps == "all" else check.integers(mlps, "mlps")
    repaired = decomposition.output.clone()
    if heads or layers:
        terms = _head_terms(decomposition, need_heads=bool(heads))
        reference_terms = terms if reference is decomposition else _head_terms(reference, need_heads=bool(heads))
        mean = reference_terms.mean(0)  # [S, (H,) E]
        for layer in layers:
            position = decomposition.layer_position(layer)
            if "head" in decomposition.head_axes:
                repaired += (mean[position].sum(0) - terms[:, position].sum(1)).to(repaired.dtype)
            else:
                repaired += (mean[position] - terms[:, position]).to(repaired.dtype)
        for layer, head in heads:
            if layer in layers:
                continue  # already ablated with its whole layer
            position = decomposition.layer_position(layer)
            if not 0 <= head < terms.shape[2]:
                raise IndexError(f"{FUNCTION}: argument 'heads' has head {head} out of range [0, {terms.shape[2]})")
            repaired += (mean[position, head] - terms[:, position, head]).to(repaired.dtype)
    for layer in mlp_layers:
        if not 0 <= layer < num_layers:
            raise IndexError(f"{FUNCTION}: argument 'mlps' has layer {layer} out of range [0, {num_layers})")
        repaired += reference.mlps[:, layer].mean(0) - decomposition.mlps[:, layer]
    if embedding:
        repaired += reference.embedding.mean(0) - decomposition.embedding
    return repaired


def zero_shot_accuracy(embeddings: Tensor, classifier: Tensor, labels: Tensor, *, topk: int = 1) -> float:
    """Fraction of images whose label is among the ``topk`` classes of ``embeddings @ classifier``.

    Args:
        embeddings: ``[B, E]`` image embeddings (normalization does not change the ranking).
        classifier: ``[E, C]`` class weights (:func:`vision_kernels.clip.zero_shot_classifier`).
        labels: ``[B]`` integer class indices.
    """
    if embeddings.dim() != 2 or classifier.dim() != 2 or embeddings.shape[1] != classifier.shape[0]:
        raise ValueError(
            "vision_kernels.clip.zero_shot_accuracy: arguments 'embeddings' [B, E] and 'classifier' [E, C] must "
            f"share E, got {list(embeddings.shape)} and {list(classifier.shape)}"
        )
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"vision_kernels.clip.zero_shot_accuracy: argument 'labels' must have shape [{embeddings.shape[0]}], "
            f"got {list(labels.shape)}"
        )
    if embeddings.shape[0] == 0:
        raise ValueError("vision_kernels.clip.zero_shot_accuracy: argument 'embeddings' holds no image")
    logits = embeddings.float() @ classifier.float().to(embeddings.device)
    top = logits.topk(min(topk, logits.shape[1]), dim=1).indices  # [B, k]
    return float((top == labels.to(top.device)[:, None]).any(1).float().mean())


def mean_ablation_accuracy(
    decomposition: Decomposition,
    classifier: Tensor,
    labels: Tensor,
    reference: Decomposition | None = None,
    **ablation: Sequence[int] | Iterable[tuple[int, int]] | str | bool,
) -> dict[str, float]:
    """Zero-shot accuracy before and after :func:`mean_ablate` with ``ablation`` (heads, layers, mlps, embedding)."""
    after = mean_ablate(decomposition, reference, **ablation)  # type: ignore[arg-type]
    return {
        "before": zero_shot_accuracy(decomposition.output, classifier, labels),
        "after": zero_shot_accuracy(after, classifier, labels),
    }
