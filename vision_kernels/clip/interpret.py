"""CLIP-InterpreT's five analyses (Madasu, Gandelsman, Lal, Howard, 2024), on the decomposition and head indexes.

1. :func:`property_neighbors`: property-based nearest-neighbour search. A property (colors, locations,
   animals, ...) is carried by a group of heads; images are compared by the sum of those heads' direct
   contributions (the group key of a :class:`~vision_kernels.clip.HeadIndex`). :func:`property_heads` suggests
   a group from TextSpan results: the heads whose text basis best matches descriptions of the property
   (the tool labelled heads with an LLM from their TextSpan texts; any head list works).
2. :func:`head_topic_segmentation`: per-head topic segmentation. The per-token contributions of one head
   projected on topic texts give one heatmap per topic, and a per-pixel label (the best topic).
3. :func:`contrastive_segmentation`: the heatmap of text A against text B on the per-token contributions of
   all heads (or chosen layers/heads); positive where the image looks more like A.
4. :func:`image_neighbors`: per-head nearest neighbours of an image: database images whose contribution
   through one head is closest (cosine of centred contributions) to the query image's.
5. :func:`text_neighbors`: per-head nearest neighbours of a text: database images whose contribution
   through one head best matches a text embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops._checks import ArgCheck
from .decompose import decompose
from .index import HeadIndex, SearchResult, head_key
from .spatial import heatmaps
from .textspan import TextSpanResult
from .towers import as_vision_tower

__all__ = [
    "ContrastiveSegmentation",
    "TopicSegmentation",
    "contrastive_segmentation",
    "head_topic_segmentation",
    "image_neighbors",
    "property_heads",
    "property_neighbors",
    "text_neighbors",
]


def property_neighbors(index: HeadIndex, model: object, images: Tensor, prop: str, k: int = 4) -> SearchResult:
    """Nearest database images of ``images`` by the summed contributions of the heads of property ``prop``.

    ``prop`` is a group key of ``index`` (built with ``groups={prop: [(layer, head), ...]}``).
    """
    return index.search_images(model, images, prop, k)


def property_heads(
    spans: Mapping[tuple[int, int], TextSpanResult], property_embeddings: Tensor, *, top: int = 4
) -> list[tuple[int, int]]:
    """The ``top`` heads whose TextSpan basis best matches a property, best first.

    A head's score is the largest ``|cos|`` between one of its chosen (deflated) text directions and one of
    the property's description embeddings ``[E]`` or ``[T, E]`` (e.g. "a photo of a red object", "color").
    """
    function = "vision_kernels.clip.property_heads"
    if not spans:
        raise ValueError(f"{function}: argument 'spans' must hold at least one head's TextSpanResult")
    queries = property_embeddings[None] if property_embeddings.dim() == 1 else property_embeddings  # [T, E]
    queries = torch.nn.functional.normalize(queries.double(), dim=-1)
    scores = {}
    for pair, result in spans.items():
        if result.basis.shape[0] == 0:
            scores[pair] = 0.0
            continue
        if result.basis.shape[1] != queries.shape[1]:
            raise ValueError(
                f"{function}: argument 'property_embeddings' must have size {result.basis.shape[1]} (the heads' "
                f"embedding size), got {list(property_embeddings.shape)}"
            )
        basis = torch.nn.functional.normalize(result.basis.double().to(queries.device), dim=-1)  # [m, E]
        scores[pair] = float((basis @ queries.T).abs().max())
    ranked = sorted(scores, key=lambda pair: -scores[pair])
    return ranked[: max(1, top)]


def image_neighbors(index: HeadIndex, model: object, images: Tensor, layer: int, head: int, k: int = 4) -> SearchResult:
    """Per-head nearest neighbours of ``images`` ``[B, C, H, W]`` through head ``(layer, head)``."""
    return index.search_images(model, images, head_key(layer, head), k)


def text_neighbors(index: HeadIndex, text_embeddings: Tensor, layer: int, head: int, k: int = 4) -> SearchResult:
    """Per-head nearest neighbours of texts ``[T, E]`` (or ``[E]``): images whose head contribution matches them."""
    return index.search_directions(head_key(layer, head), text_embeddings, k)


@dataclass
class TopicSegmentation:
    """Result of :func:`head_topic_segmentation`.

    Attributes:
        heatmaps: ``[B, T, H, W]`` the head's per-patch contributions projected on each topic text.
        labels: ``[B, H, W]`` index of the best topic at each pixel.
    """

    heatmaps: Tensor
    labels: Tensor


def head_topic_segmentation(
    model: object,
    images: Tensor,
    layer: int,
    head: int,
    text_embeddings: Tensor,
    *,
    contrast: Tensor | str | None = None,
    upsample: bool = True,
) -> TopicSegmentation:
    """Topic heatmaps ``[B, T, H, W]`` of one head: ``heat[b, t, patch] = c_{l, h}(patch) . (text_t - contrast)``.

    Args:
        model: open_clip CLIP / ViT tower or transformers CLIP vision model.
        images: ``[B, C, H, W]`` preprocessed images.
        layer, head: the head (model layer index).
        text_embeddings: ``[T, E]`` topic texts (or ``[E]``).
        contrast: subtracted from the texts: None, ``"mean"`` (their mean) or an embedding.
        upsample: maps at the image's resolution (else the patch grid).
    """
    tower = as_vision_tower(model)
    decomposition = decompose(tower, images, layers=[layer], per_token=True, per_head=True, keep_capture=False)
    layer = decomposition.layers[0]
    maps = heatmaps(
        decomposition,
        text_embeddings,
        contrast=contrast,
        image_size=tower.image_size if upsample else None,
        heads=[(layer, head)],
    )
    return TopicSegmentation(heatmaps=maps, labels=maps.argmax(1))


@dataclass
class ContrastiveSegmentation:
    """Result of :func:`contrastive_segmentation`.

    Attributes:
        heatmaps: ``[B, H, W]`` per-patch contributions projected on ``text_a - text_b``.
        masks: ``[B, H, W]`` where text A wins (``heatmaps > 0``).
    """

    heatmaps: Tensor
    masks: Tensor


def contrastive_segmentation(
    model: object,
    images: Tensor,
    text_a: Tensor,
    text_b: Tensor,
    *,
    layers: int | Sequence[int] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    upsample: bool = True,
) -> ContrastiveSegmentation:
    """Where ``images`` look like ``text_a`` rather than ``text_b`` (embeddings ``[E]``), from per-token contributions.

    Summed over all heads of ``layers`` (default: every layer), or over the ``(layer, head)`` pairs ``heads``.
    """
    function = "vision_kernels.clip.contrastive_segmentation"
    for value, name in ((text_a, "text_a"), (text_b, "text_b")):
        if not isinstance(value, Tensor) or value.dim() != 1:
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{function}: argument '{name}' must be one text embedding [E], got {shape}")
    tower = as_vision_tower(model)
    if heads is not None:
        count = tower.num_layers
        check = ArgCheck(function)
        heads = [(check.integer(layer, "heads"), check.integer(h, "heads")) for layer, h in heads]
        heads = [(layer % count if -count <= layer < count else layer, h) for layer, h in heads]
    chosen_layers = sorted({layer for layer, _ in heads}) if heads is not None else layers
    decomposition = decompose(
        tower, images, layers=chosen_layers, per_token=True, per_head=heads is not None,
        per_layer=heads is not None, keep_capture=False,
    )  # fmt: skip
    maps = heatmaps(
        decomposition, text_a, contrast=text_b, image_size=tower.image_size if upsample else None, heads=heads
    )[:, 0]
    return ContrastiveSegmentation(heatmaps=maps, masks=maps > 0)
