"""Zero-shot segmentation scores over an image/mask folder pair (Gandelsman et al., Sec. 5), streamed and distributed.

For image ``b`` with class ``c`` (its class folder) the heatmap is the per-token decomposition
summed over heads and the chosen layers, dotted with the class prompt's embedding minus the mean
of all class prompts (the paper's contrast; :func:`~vision_kernels.clip.heatmaps` with
``contrast="mean"``), on the patch grid, upsampled bilinearly to the model's resolution. With
``text`` one prompt serves every image (no contrast). :func:`~vision_kernels.clip.segment` turns a
heatmap into a mask (clip at 0, min-max normalize, threshold at the mean) and the scores are

    pixel accuracy = correct pixels / pixels,  IoU_fg = |P & M| / |P | M|,  IoU_bg likewise,
    mIoU = (IoU_fg + IoU_bg) / 2,  mAP = mean over images of AP([1 - s, s], [~M, M])

(:func:`~vision_kernels.clip.segmentation_scores` over the whole set): the counts and the AP sum
are accumulated per batch, each rank on its own batches, and summed with ``all_reduce``.

Masks: ``MASKS/<relative path of the image without extension>.<image extension>``, foreground where
the mask is non-zero. The mask goes through the geometry of the model's preprocessing (shorter side
resized to the model's size with nearest-neighbour sampling, then center-cropped), as open_clip's and
CLIP's image processors do with the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _progress
from .._files import atomic_open
from ..runs import distributed
from .data import IMAGE_EXTENSIONS, ImageSource, image_batches, model_transform, open_image_source
from .decompose import decompose, normalize_layers
from .runs import ModelChoice, check_model_name, load_model
from .spatial import average_precision, heatmaps, segment
from .towers import as_vision_tower

__all__ = ["segment_run", "find_masks"]

FUNCTION = "vision_kernels.clip.segment_run"


def find_masks(source: ImageSource, masks: str | os.PathLike[str]) -> list[Path]:
    """The mask file of every image of ``source`` (same relative path, any image extension).

    Raises FileNotFoundError naming the first images without a mask.
    """
    root = Path(masks)
    if not root.is_dir():
        raise FileNotFoundError(f"{FUNCTION}: argument 'masks': no such folder {str(root)!r}")
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name.lower().endswith(IMAGE_EXTENSIONS):
            found.setdefault(path.relative_to(root).with_suffix("").as_posix(), path)
    keys = [Path(key).with_suffix("").as_posix() for key in source.keys]
    missing = [key for key in keys if key not in found]
    if missing:
        raise FileNotFoundError(
            f"{FUNCTION}: argument 'masks': {len(missing)} of {len(keys)} images have no mask in {str(root)!r} "
            f"(e.g. {missing[0]!r} + an image extension)"
        )
    return [found[key] for key in keys]


def _load_mask(path: Path, size: tuple[int, int]) -> Tensor:
    """Foreground ``[H, W]`` bool of a mask file: shorter side resized to the model's size (nearest) and
    center-cropped, as torchvision's ``Resize(size)`` + ``CenterCrop(size)`` in the image preprocessing."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    with Image.open(path) as image:
        mask = image.convert("L")
    mask = TF.center_crop(TF.resize(mask, min(size), interpolation=InterpolationMode.NEAREST), list(size))
    return torch.from_numpy(np.asarray(mask) > 0)


def segment_run(
    out: str | os.PathLike[str],
    images: str | os.PathLike[str],
    masks: str | os.PathLike[str],
    *,
    model: str | ModelChoice,
    layers: list[int] | None = None,
    text: str | None = None,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "cpu",
) -> dict[str, Path]:
    """Zero-shot segmentation scores of ``images`` against ``masks``; writes ``segmentation.json`` and
    ``segmentation.md`` into ``out`` (created if missing). See the module docstring.

    Raises:
        FileNotFoundError: a missing folder or mask; ValueError: unlabeled images without ``text``, an
        unknown model or layer.
    """
    choice = model if isinstance(model, ModelChoice) else ModelChoice(str(model))
    check_model_name(choice, FUNCTION)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"{FUNCTION}: argument 'batch_size' must be a positive integer, got {batch_size!r}")
    source = open_image_source(images)
    mask_files = find_masks(source, masks)
    if text is None and len(source.classes) < 2:
        raise ValueError(
            f"{FUNCTION}: without --text the images must sit in at least 2 class sub-folders (the class prompt of "
            f"each image is contrasted with the others), got {len(source.classes)} classes in {str(images)!r}"
        )
    out_folder = Path(out)
    if out_folder.exists() and not out_folder.is_dir():
        raise NotADirectoryError(f"{FUNCTION}: argument 'out' {str(out_folder)!r} is not a folder")
    distributed.init_from_env(device)
    loaded = load_model(choice, device=device, function=FUNCTION)
    tower = as_vision_tower(loaded.model)
    layer_list = normalize_layers(layers, tower.num_layers, FUNCTION)
    from .texts import DEFAULT_TEMPLATES, encode_texts

    prompts = [text] if text is not None else [DEFAULT_TEMPLATES[0].format(name) for name in source.classes]
    texts = encode_texts(loaded.model, prompts, tokenizer=loaded.tokenizer)  # [T, E]
    contrast = None if text is not None else "mean"
    blocks = [list(range(s, min(s + batch_size, len(source)))) for s in range(0, len(source), batch_size)]
    mine = distributed.owned(blocks)
    sums = torch.zeros(8, dtype=torch.float64)  # correct, pixels, inter/union fg, inter/union bg, AP sum, images
    failed: list[list[Any]] = []
    batches = image_batches(source, model_transform(loaded), mine, batch_size=batch_size, workers=workers)
    for batch in _progress.progress(batches, desc="clip segment", total=len(mine)):
        failed += [[index, source.keys[index], reason] for index, reason in batch.failed]
        if batch.indices.numel() == 0:
            continue
        with torch.no_grad():
            decomposition = decompose(
                loaded.model, batch.images.to(device), layers=layer_list, per_token=True, per_head=False,
                per_layer=False, keep_capture=False,
            )  # fmt: skip
        maps = heatmaps(decomposition, texts, contrast=contrast)  # [B, T, rows, cols]
        choice_rows = torch.zeros_like(batch.labels) if text is not None else batch.labels
        chosen = maps[torch.arange(maps.shape[0]), choice_rows.to(maps.device)]  # [B, rows, cols]
        size = (int(tower.image_size[0]), int(tower.image_size[1]))
        upsampled = F.interpolate(chosen[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        targets = torch.stack([_load_mask(mask_files[i], size) for i in batch.indices.tolist()])  # [B, H, W]
        predicted, scores = segment(upsampled.cpu())
        sums[0] += float((predicted == targets).sum())
        sums[1] += targets.numel()
        sums[2] += float((predicted & targets).sum())
        sums[3] += float((predicted | targets).sum())
        sums[4] += float((~predicted & ~targets).sum())
        sums[5] += float((~predicted | ~targets).sum())
        for score, mask in zip(scores, targets, strict=True):
            sums[6] += average_precision(torch.stack([1 - score, score]), torch.stack([~mask, mask]))
        sums[7] += targets.shape[0]
    for index, key, reason in failed:
        distributed.log(f"clip segment: skipped unreadable image {index} {key!r}: {reason}")
    distributed.all_reduce_sum(sums)
    failed_count = torch.tensor([float(len(failed))], dtype=torch.float64)
    distributed.all_reduce_sum(failed_count)
    if sums[7] == 0:
        raise ValueError(f"{FUNCTION}: none of the {len(source)} images of {str(images)!r} could be read")
    iou_fg, iou_bg = float(sums[2] / sums[3].clamp_min(1)), float(sums[4] / sums[5].clamp_min(1))
    scores_table = {
        "pixel_accuracy": float(sums[0] / sums[1]),
        "iou_background": iou_bg,
        "iou_foreground": iou_fg,
        "miou": (iou_bg + iou_fg) / 2,
        "map": float(sums[6] / sums[7]),
    }
    report = {
        "images": int(sums[7]),
        "unreadable": int(failed_count.item()),
        "unreadable_rank0": failed,  # every rank also logs its own
        "model": choice.describe(),
        "layers": layer_list,
        "prompts": "text" if text is not None else "class",
        "scores": scores_table,
    }
    paths = {"json": out_folder / "segmentation.json", "md": out_folder / "segmentation.md"}
    if distributed.current().main:
        out_folder.mkdir(exist_ok=True)
        with atomic_open(paths["json"], "w", encoding="utf-8", function=FUNCTION) as handle:
            json.dump(report, handle, indent=1)
        lines = [f"# Zero-shot segmentation over {report['images']} images", "", "| score | value |", "|---|---|"]
        lines += [f"| {name} | {100 * value:.2f}% |" for name, value in scores_table.items()]
        with atomic_open(paths["md"], "w", encoding="utf-8", function=FUNCTION) as handle:
            handle.write("\n".join(lines) + "\n")
    distributed.barrier()
    return paths
