"""Zero-shot segmentation from MLP neurons (Gandelsman, Efros, Steinhardt, 2024, Sec. 6).

The neurons whose second-order effects point towards a class are found from their principal directions
``p_n`` (:class:`vision_kernels.clip.NeuronStatistics`): for a class text embedding ``t``, the ``top`` neurons
of the chosen MLP layers with the largest ``|p_n . t|``. The segmentation map of an image is the mean of
those neurons' activations (after the non-linearity) at the patch tokens, reshaped to the patch grid and
upsampled bilinearly to the image; it is min-max normalized and thresholded at 0.5 (the paper's recipe,
``vision_kernels.clip.segment(maps, threshold=0.5, clip=False)``). Scores are those of the first-order
segmentation: :func:`vision_kernels.clip.segmentation_scores` (pixel accuracy, mIoU, mAP).

With a zero-shot classifier ``[E, C]`` instead of one text, each image uses the neurons of its predicted
class (the argmax of its embedding against the classifier), as in the paper's evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .capture import Capture, capture
from .neurons import NeuronStatistics
from .spatial import segment
from .towers import VisionTower, as_vision_tower, check_images

__all__ = ["NeuronSegmentation", "neuron_heatmaps", "neuron_segmentation", "select_neurons"]

FUNCTION = "vision_kernels.clip.neuron_segmentation"


def _principal_table(statistics: NeuronStatistics | Sequence[NeuronStatistics], function: str) -> tuple[Tensor, Tensor]:
    """All neurons' principal directions ``[K, E]`` and their ``(layer, neuron)`` pairs ``[K, 2]``."""
    if isinstance(statistics, NeuronStatistics):
        statistics = [statistics]
    directions, pairs = [], []
    for position, stats in enumerate(statistics):
        if stats.layer is None or stats.neurons is None:
            raise ValueError(
                f"{function}: argument 'statistics' entry {position} does not record its layer and neurons; use "
                "statistics from collect_neuron_statistics or pass layer= and neurons= to neuron_statistics"
            )
        directions.append(stats.principal.float())
        neurons = stats.neurons.to(torch.long).cpu()
        pairs.append(torch.stack([torch.full_like(neurons, stats.layer), neurons], 1))
    if not directions:
        raise ValueError(f"{function}: argument 'statistics' must hold at least one layer's statistics")
    return torch.cat(directions), torch.cat(pairs)


def select_neurons(
    statistics: NeuronStatistics | Sequence[NeuronStatistics],
    text_embeddings: Tensor,
    *,
    top: int = 200,
    absolute: bool = True,
) -> Tensor:
    """The ``top`` neurons most aligned with each text: ``[T, top, 2]`` ``(layer, neuron)`` pairs.

    Neurons of every layer in ``statistics`` compete; a neuron's score for text ``t`` is ``|p_n . t|``
    (``p_n . t`` with ``absolute=False``), ``p_n`` its principal direction.
    """
    directions, pairs = _principal_table(statistics, "vision_kernels.clip.select_neurons")  # [K, E], [K, 2]
    texts = text_embeddings[None] if text_embeddings.dim() == 1 else text_embeddings  # [T, E]
    if texts.dim() != 2 or texts.shape[1] != directions.shape[1]:
        raise ValueError(
            f"vision_kernels.clip.select_neurons: argument 'text_embeddings' must be [E] or [T, E] with "
            f"E = {directions.shape[1]} (the statistics' embedding size), got {list(text_embeddings.shape)}"
        )
    if not 1 <= top <= directions.shape[0]:
        raise ValueError(
            f"vision_kernels.clip.select_neurons: argument 'top' must be in [1, {directions.shape[0]}] (the neurons "
            f"of the statistics), got {top}"
        )
    scores = texts.float().cpu() @ directions.cpu().T  # [T, K]
    if absolute:
        scores = scores.abs()
    chosen = scores.topk(top, dim=1).indices  # [T, top]
    return pairs[chosen]


def neuron_heatmaps(
    model: object,
    images: Tensor,
    neurons: Tensor,
    *,
    image_size: tuple[int, int] | None = None,
    mode: str = "bilinear",
) -> Tensor:
    """Mean activation maps ``[B, H, W]`` of chosen neurons over the patch tokens, upsampled to ``image_size``.

    Args:
        model: open_clip CLIP / ViT tower or transformers CLIP vision model.
        images: ``[B, C, H, W]`` preprocessed images.
        neurons: ``[K, 2]`` ``(layer, neuron)`` pairs used for every image, or ``[B, K, 2]`` one set per image.
        image_size: output size (default: the model's image size; pass the patch grid to keep it).
        mode: interpolation mode of ``torch.nn.functional.interpolate``.
    """
    function = "vision_kernels.clip.neuron_heatmaps"
    tower = as_vision_tower(model)
    images = check_images(tower, images, function)
    per_image = neurons if neurons.dim() == 3 else neurons[None].expand(images.shape[0], -1, -1)
    if per_image.shape[0] != images.shape[0] or per_image.shape[-1] != 2:
        raise ValueError(
            f"{function}: argument 'neurons' must be [K, 2] or [{images.shape[0]}, K, 2] (layer, neuron) pairs, "
            f"got {list(neurons.shape)}"
        )
    layers = per_image[..., 0]
    if bool(((layers < 0) | (layers >= tower.num_layers)).any()):
        raise IndexError(f"{function}: argument 'neurons' holds layer indices outside [0, {tower.num_layers})")
    with torch.no_grad():
        cap = capture(tower, images, keep_neurons=sorted({int(v) for v in per_image[..., 0].unique()}))
    return _maps(tower, cap, per_image, image_size, mode, function)


def _maps(
    tower: VisionTower,
    cap: Capture,
    per_image: Tensor,
    image_size: tuple[int, int] | None,
    mode: str,
    function: str,
) -> Tensor:
    """``[B, H, W]`` mean activation over each image's ``(layer, neuron)`` pairs ``[B, K, 2]`` at the patches."""
    assert cap.neurons is not None and cap.neuron_layers is not None
    layers = list(cap.neuron_layers)
    hidden = cap.neurons.shape[-1]
    pairs = per_image.to(cap.neurons.device, torch.long)
    bad = (pairs[..., 1] < 0) | (pairs[..., 1] >= hidden)
    if bool(bad.any()):
        raise IndexError(f"{function}: argument 'neurons' holds neuron indices outside [0, {hidden})")
    slot_of_layer = torch.full((tower.num_layers,), -1, dtype=torch.long)
    slot_of_layer[layers] = torch.arange(len(layers))
    slots = slot_of_layer.to(pairs.device)[pairs[..., 0]]  # [B, K]: position along the captured layers
    batch = torch.arange(pairs.shape[0], device=pairs.device)[:, None].expand_as(slots)
    chosen = cap.neurons[batch, slots, :, pairs[..., 1]]  # [B, K, N]
    rows, cols = tower.grid_size
    maps = chosen.float().mean(1)[:, 1:].reshape(-1, 1, rows, cols)  # patch tokens only
    size = tuple(image_size) if image_size is not None else tuple(tower.image_size)
    if size != (rows, cols):
        align = False if mode in ("bilinear", "bicubic") else None
        maps = F.interpolate(maps, size=size, mode=mode, align_corners=align)
    return maps[:, 0]


@dataclass
class NeuronSegmentation:
    """Result of :func:`neuron_segmentation`.

    Attributes:
        heatmaps: ``[B, H, W]`` mean activations of the chosen neurons (before normalization).
        scores: ``[B, H, W]`` min-max normalized heatmaps in [0, 1].
        masks: ``[B, H, W]`` foreground, ``scores > threshold``.
        neurons: ``[B, top, 2]`` the ``(layer, neuron)`` pairs used for each image.
        classes: ``[B]`` the class used for each image (its prediction with a classifier, else 0).
    """

    heatmaps: Tensor
    scores: Tensor
    masks: Tensor
    neurons: Tensor
    classes: Tensor


def neuron_segmentation(
    model: object,
    images: Tensor,
    statistics: NeuronStatistics | Sequence[NeuronStatistics],
    text_embeddings: Tensor,
    *,
    top: int = 200,
    threshold: float = 0.5,
    absolute: bool = True,
    image_size: tuple[int, int] | None = None,
) -> NeuronSegmentation:
    """Segment ``images`` with the neurons most aligned with a class (the paper's neuron-based segmentation).

    Args:
        model: open_clip CLIP / ViT tower or transformers CLIP vision model.
        images: ``[B, C, H, W]`` preprocessed images.
        statistics: :class:`NeuronStatistics` of the MLP layers to draw neurons from (the paper: layers 8-10
            of ViT-B-32), with their layer and neuron indices.
        text_embeddings: ``[E]`` one class text for every image, or a zero-shot classifier ``[E, C]`` (each image
            uses its predicted class).
        top: neurons per class (the paper: 200).
        threshold: foreground where the normalized map exceeds it.
        absolute: rank neurons by ``|p . t|`` (else ``p . t``).
        image_size: size of the maps (default: the model's image size).

    Scores against ground-truth masks: ``segmentation_scores(result.heatmaps, masks, threshold=0.5, clip=False)``.
    """
    tower = as_vision_tower(model)
    images = check_images(tower, images, FUNCTION)
    if text_embeddings.dim() == 1:
        classes = torch.zeros(images.shape[0], dtype=torch.long)
        texts = text_embeddings[None]  # [1, E]
    elif text_embeddings.dim() == 2:
        texts = text_embeddings.T  # [C, E]
        classes = None
    else:
        raise ValueError(
            f"{FUNCTION}: argument 'text_embeddings' must be a class text [E] or a classifier [E, C], got "
            f"{list(text_embeddings.shape)}"
        )
    per_class = select_neurons(statistics, texts, top=top, absolute=absolute)  # [C, top, 2]
    with torch.no_grad():
        cap = capture(tower, images, keep_neurons=sorted({int(v) for v in per_class[..., 0].unique()}))
        if classes is None:
            classes = (cap.output.float() @ text_embeddings.float().to(cap.output.device)).argmax(1).cpu()
        per_image = per_class[classes]  # [B, top, 2]
        maps = _maps(tower, cap, per_image, image_size, "bilinear", FUNCTION)
    masks, scores = segment(maps, threshold=threshold, clip=False)
    return NeuronSegmentation(heatmaps=maps, scores=scores, masks=masks, neurons=per_image, classes=classes)
