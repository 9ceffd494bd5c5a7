"""Small figure helpers shared by demo sections (matplotlib, Agg backend, no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._files import save_figure


def save_panels(
    path: Path, panels: Sequence[tuple[str, np.ndarray]], *, title: str = "", cmap: str = "viridis"
) -> Path:
    """Save images side by side with a caption each; grayscale panels use ``cmap`` with a colorbar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for axis, (caption, image) in zip(axes[0], panels, strict=True):
        if image.ndim == 2:
            shown = axis.imshow(image, cmap=cmap)
            figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04)
        else:
            axis.imshow(np.clip(image, 0, 1))
        axis.set_title(caption, fontsize=9)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(figure, path, dpi=110)
    plt.close(figure)
    return path
