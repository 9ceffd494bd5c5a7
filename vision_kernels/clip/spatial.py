"""Spatial maps from the per-token decomposition: text heatmaps and zero-shot segmentation (Sec. 5).

Summing the head terms of the chosen layers over heads leaves one contribution per source token
``c_i [E]``; the heatmap of a text with embedding ``t`` is ``c_i . t`` over the patch tokens,
reshaped to the patch grid and upsampled to the image. A contrast direction (a second text, or
the mean over a set of class texts as in the paper's segmentation) is subtracted from ``t``.

Segmentation follows the paper's ImageNet-segmentation protocol: clip the map at 0, min-max
normalize it per image, threshold at its mean. Scores: pixel accuracy and the IoU of background
and foreground (their mean is mIoU), accumulated over the dataset, and the average precision of
the (background, foreground) score maps against the mask, averaged over images (mAP).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops._checks import ArgCheck
from .decompose import Decomposition, decompose

__all__ = [
    "token_contributions",
    "heatmaps",
    "text_heatmaps",
    "segment",
    "average_precision",
    "segmentation_scores",
]


def token_contributions(decomposition: Decomposition, heads: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """Head terms summed over the decomposed layers and heads (or only the ``(layer, head)`` pairs ``heads``, model
    layer indices), per source token: ``[B, N, E]``."""
    function = "vision_kernels.clip.token_contributions"
    if "token" not in decomposition.head_axes:
        raise ValueError(f"{function}: the decomposition has no token axis; decompose with per_token=True")
    if heads is None:
        return decomposition.head_sum(("image", "token", "dim"))
    if "layer" not in decomposition.head_axes or "head" not in decomposition.head_axes:
        raise ValueError(f"{function}: selecting heads needs a decomposition with per_layer=True and per_head=True")
    check = ArgCheck(function)
    pairs = [(check.integer(layer, "heads"), check.integer(head, "heads")) for layer, head in heads]
    if not pairs:
        raise ValueError(f"{function}: argument 'heads' must list at least one (layer, head) pair")
    count = decomposition.heads.shape[2]
    total = None
    for layer, head in pairs:
        if not 0 <= head < count:
            raise IndexError(f"{function}: argument 'heads' has head {head} out of range [0, {count})")
        term = decomposition.heads[:, decomposition.layer_position(layer), head]  # [B, N, E]
        total = term if total is None else total + term
    return total  # type: ignore[return-value]


def _directions(text_embeddings: Tensor, contrast: Tensor | str | None, function: str) -> Tensor:
    texts = text_embeddings[None] if text_embeddings.dim() == 1 else text_embeddings  # [T, E]
    if texts.dim() != 2 or texts.shape[0] == 0:
        raise ValueError(
            f"{function}: argument 'text_embeddings' must be [E] or a non-empty [T, E], "
            f"got {list(text_embeddings.shape)}"
        )
    if contrast is None:
        return texts
    if isinstance(contrast, str):
        if contrast != "mean":
            raise ValueError(
                f"{function}: argument 'contrast' must be None, 'mean' or a text embedding, got {contrast!r}"
            )
        return texts - texts.mean(0, keepdim=True)
    other = contrast[None] if contrast.dim() == 1 else contrast
    if other.shape[-1] != texts.shape[-1] or other.shape[0] not in (1, texts.shape[0]):
        raise ValueError(
            f"{function}: argument 'contrast' must be [E] or [T, E] like 'text_embeddings' {list(texts.shape)}, "
            f"got {list(contrast.shape)}"
        )
    return texts - other


def heatmaps(
    decomposition: Decomposition,
    text_embeddings: Tensor,
    *,
    contrast: Tensor | str | None = None,
    image_size: tuple[int, int] | None = None,
    mode: str = "bilinear",
    heads: Sequence[tuple[int, int]] | None = None,
) -> Tensor:
    """Per-patch heatmaps ``[B, T, H, W]`` of texts on a per-token decomposition.

    ``heat[b, t, patch] = token_contributions[b, patch] . (text_t - contrast)``, patch tokens only,
    reshaped to the patch grid and upsampled to ``image_size`` (None: the grid itself).

    Args:
        decomposition: decomposed with ``per_token=True`` (any layers; heads and layers are summed).
        text_embeddings: ``[E]`` or ``[T, E]``.
        contrast: None, a second embedding ``[E]`` / ``[T, E]`` subtracted from the texts, or
            ``"mean"`` to subtract the mean of ``text_embeddings`` (the paper's class contrast).
        image_size: output ``(H, W)``; usually the model's image size.
        mode: interpolation mode of ``torch.nn.functional.interpolate``.
        heads: only these ``(layer, head)`` pairs (model layer indices) instead of all decomposed heads.
    """
    function = "vision_kernels.clip.heatmaps"
    directions = _directions(text_embeddings, contrast, function)  # [T, E]
    tokens = token_contributions(decomposition, heads)  # [B, N, E]
    if directions.shape[1] != tokens.shape[-1]:
        raise ValueError(
            f"{function}: argument 'text_embeddings' must have size {tokens.shape[-1]} in its last dimension "
            f"(the embedding size), got {list(text_embeddings.shape)}"
        )
    rows, cols = decomposition.grid
    patches = tokens[:, 1:].float()  # [B, P, E]
    scores = (patches @ directions.float().to(patches.device).T).transpose(1, 2)  # [B, T, P]
    maps = scores.reshape(scores.shape[0], scores.shape[1], rows, cols)  # [B, T, rows, cols]
    if image_size is not None and tuple(image_size) != (rows, cols):
        align = False if mode in ("bilinear", "bicubic") else None
        maps = F.interpolate(maps, size=tuple(image_size), mode=mode, align_corners=align)
    return maps


def text_heatmaps(
    model: object,
    images: Tensor,
    text_embeddings: Tensor,
    *,
    layers: int | Sequence[int] | None = None,
    contrast: Tensor | str | None = None,
    upsample: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Text heatmaps ``[B, T, H, W]`` of ``images``, decomposed per token and summed over heads and ``layers``.

    Only ``[B, N, E]`` token terms are formed (``per_head=False, per_layer=False``), so this is as
    cheap in memory as one forward pass.
    """
    from .towers import as_vision_tower

    tower = as_vision_tower(model)
    decomposition = decompose(
        tower, images, layers=layers, per_token=True, per_head=False, per_layer=False, keep_capture=False,
        batch_size=batch_size,
    )  # fmt: skip
    return heatmaps(
        decomposition, text_embeddings, contrast=contrast, image_size=tower.image_size if upsample else None
    )


def segment(heatmaps_: Tensor, *, threshold: float | str = "mean", clip: bool = True) -> tuple[Tensor, Tensor]:
    """Foreground masks from heatmaps ``[B, H, W]``: clip at 0, min-max normalize per image, threshold at the mean.

    ``clip=False`` skips the clipping and a number ``threshold`` replaces the mean (the neuron-based segmentation
    of the second-order paper thresholds the min-max normalized map at 0.5 without clipping).

    Returns:
        ``(masks, scores)``: boolean ``[B, H, W]`` foreground and the normalized scores in [0, 1].
    """
    if heatmaps_.dim() != 3:
        raise ValueError(
            f"vision_kernels.clip.segment: argument 'heatmaps' must be [B, H, W], got {list(heatmaps_.shape)}"
        )
    if isinstance(threshold, str) and threshold != "mean":
        raise ValueError(
            f"vision_kernels.clip.segment: argument 'threshold' must be 'mean' or a number, got {threshold!r}"
        )
    clipped = heatmaps_.float().clamp_min(0) if clip else heatmaps_.float()
    low = clipped.amin(dim=(1, 2), keepdim=True)
    high = clipped.amax(dim=(1, 2), keepdim=True)
    scores = (clipped - low) / (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    scores = torch.nan_to_num(scores)
    cut = scores.mean(dim=(1, 2), keepdim=True) if threshold == "mean" else float(threshold)
    return scores > cut, scores


def average_precision(scores: Tensor, targets: Tensor) -> float:
    """Average precision of ``scores`` ranking the positive ``targets`` (``sklearn.metrics.average_precision_score``).

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds in decreasing order; 0 when
    there is no positive.
    """
    s = scores.reshape(-1).double()
    t = targets.reshape(-1).double()
    if s.shape != t.shape:
        raise ValueError(
            f"vision_kernels.clip.average_precision: arguments 'scores' and 'targets' must have as many "
            f"elements, got {scores.numel()} and {targets.numel()}"
        )
    positives = float(t.sum())
    if s.numel() == 0 or positives == 0:
        return 0.0
    order = torch.argsort(s, descending=True, stable=True)
    s, t = s[order], t[order]
    last_of_threshold = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), s.new_tensor([s.numel() - 1]).long()])
    true_positives = torch.cumsum(t, 0)[last_of_threshold]
    predicted = (last_of_threshold + 1).double()
    precision = true_positives / predicted
    recall = true_positives / positives
    previous = torch.cat([recall.new_zeros(1), recall[:-1]])
    return float(((recall - previous) * precision).sum())


def segmentation_scores(
    heatmaps_: Tensor, masks: Tensor, *, threshold: float | str = "mean", clip: bool = True
) -> dict[str, float]:
    """Zero-shot segmentation scores of heatmaps ``[B, H, W]`` against ground-truth foreground ``masks [B, H, W]``.

    Returns ``pixel_accuracy``, ``iou_background``, ``iou_foreground``, ``miou`` (accumulated over
    all pixels of the batch) and ``map`` (mean over images of the average precision of the
    background and foreground score maps together, as in the paper's evaluation). ``threshold`` and ``clip``
    go to :func:`segment`.
    """
    if heatmaps_.shape != masks.shape or heatmaps_.dim() != 3:
        raise ValueError(
            "vision_kernels.clip.segmentation_scores: arguments 'heatmaps' and 'masks' must both be [B, H, W], "
            f"got {list(heatmaps_.shape)} and {list(masks.shape)}"
        )
    target = masks.bool().to(heatmaps_.device)
    predicted, scores = segment(heatmaps_, threshold=threshold, clip=clip)
    correct = (predicted == target).sum()
    inter_fg = (predicted & target).sum()
    union_fg = (predicted | target).sum()
    inter_bg = (~predicted & ~target).sum()
    union_bg = (~predicted | ~target).sum()
    iou_fg = float(inter_fg) / max(float(union_fg), 1.0)
    iou_bg = float(inter_bg) / max(float(union_bg), 1.0)
    aps = []
    for score, mask in zip(scores, target, strict=True):
        stacked_scores = torch.stack([1 - score, score])
        stacked_targets = torch.stack([~mask, mask])
        aps.append(average_precision(stacked_scores, stacked_targets))
    return {
        "pixel_accuracy": float(correct) / target.numel(),
        "iou_background": iou_bg,
        "iou_foreground": iou_fg,
        "miou": (iou_bg + iou_fg) / 2,
        "map": sum(aps) / len(aps),
    }
