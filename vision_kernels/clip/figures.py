"""Matplotlib figures of heatmaps over images, drawn off-screen.

Figures are :class:`matplotlib.figure.Figure` objects drawn by their own Agg canvas: no pyplot, so the user's
matplotlib backend and pyplot state are never touched. Files are written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import _optional
from .._files import atomic_path

__all__ = ["overlay_figure"]


def _as_image(image: Tensor | np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` float array in [0, 1] from a ``[3, H, W]`` tensor or an ``[H, W, 3]`` array (min-max scaled)."""
    array = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        array = (array - low) / max(high - low, 1e-12)
    return array


def overlay_figure(
    images: Tensor | Sequence[np.ndarray],
    maps: Tensor,
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    masks: Tensor | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    suptitle: str = "",
) -> Path:
    """Save a grid: per image its picture, then each heatmap overlaid on it (and the mask if given).

    Args:
        images: ``[B, 3, H, W]`` tensor or a sequence of ``[H, W, 3]`` arrays (any range; min-max scaled
            for display when outside [0, 1]).
        maps: ``[B, H, W]`` or ``[B, T, H, W]`` heatmaps at the images' resolution.
        path: output file (PNG, PDF, ...).
        titles: one column title per map (T of them).
        row_titles: one label per image.
        masks: optional ``[B, H, W]`` masks shown in a last column.
        alpha: opacity of the heatmap.
        cmap: matplotlib colormap of the heatmap.
    """
    feature = "vision_kernels.clip.overlay_figure"
    _optional.require("matplotlib", feature=feature)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maps = maps[:, None] if maps.dim() == 3 else maps
    if maps.dim() != 4:
        raise ValueError(
            f"vision_kernels.clip.overlay_figure: argument 'maps' must be [B, (T,) H, W], got {list(maps.shape)}"
        )
    count, per_image = maps.shape[0], maps.shape[1]
    if len(images) != count:
        raise ValueError(
            f"vision_kernels.clip.overlay_figure: argument 'images' must hold {count} images (one per map), "
            f"got {len(images)}"
        )
    if titles is not None and len(titles) != per_image:
        raise ValueError(f"vision_kernels.clip.overlay_figure: argument 'titles' must hold {per_image} titles")
    columns = 1 + per_image + (1 if masks is not None else 0)
    figure = Figure(figsize=(2.6 * columns, 2.6 * count))
    FigureCanvasAgg(figure)  # the figure's own off-screen canvas (no pyplot, no backend switch)
    axes = figure.subplots(count, columns, squeeze=False)
    for row in range(count):
        picture = _as_image(images[row])
        axes[row, 0].imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        axes[row, 0].set_title(row_titles[row] if row_titles else "image", fontsize=8)
        for column in range(per_image):
            heat = maps[row, column].detach().float().cpu().numpy()
            axis = axes[row, 1 + column]
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            axis.imshow(heat, cmap=cmap, alpha=alpha)
            axis.set_title(titles[column] if titles else "heatmap", fontsize=8)
        if masks is not None:
            axes[row, -1].imshow(torch.as_tensor(masks[row]).float().cpu().numpy(), cmap="gray")
            axes[row, -1].set_title("mask", fontsize=8)
        for axis in axes[row]:
            axis.axis("off")
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, function=feature) as temporary:
        figure.savefig(temporary, dpi=100)
    return path
