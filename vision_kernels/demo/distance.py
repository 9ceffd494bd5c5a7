"""Demo section for sq_l2_distance: rebuild one half of an image from the other half's patches.

Every 5x5 patch of the left half of skimage's astronaut is matched to its nearest patch (squared
L2 over the 75 values) in the right half; the left half is then redrawn from the centre pixels
of the matched patches, and the distance of each match is shown as a map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..ops import sq_l2_distance
from ._figures import save_panels

ORDER = 10  # place in the demo run (vision_kernels.demo discovers the sections)


def run(out_dir: Path, quick: bool) -> list[Path]:
    from skimage import data, transform

    size = 48 if quick else 96
    image = transform.resize(data.astronaut(), (size, size), anti_aliasing=True).astype(np.float32)  # [H, W, 3]
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None]  # [1, 3, H, W]
    half = size // 2
    patch = 5
    left = F.unfold(F.pad(pixels[..., :half], (2, 2, 2, 2), mode="reflect"), patch)[0].t()  # [H * half, 75]
    right = F.unfold(pixels[..., half:], patch)[0].t()  # [(H - 4) * (half - 4), 75]
    distances = sq_l2_distance(left, right)  # [H * half, keys]
    best = distances.argmin(dim=1)
    centre = right.view(-1, 3, patch, patch)[:, :, patch // 2, patch // 2]  # [keys, 3]
    rebuilt = centre[best].view(size, half, 3).numpy()
    error = (distances.min(dim=1).values / left.shape[1]).view(size, half).numpy()
    path = save_panels(
        out_dir / "nearest_patch_rebuild.png",
        [
            ("left half (queries)", image[:, :half]),
            ("right half (keys)", image[:, half:]),
            ("left rebuilt from right's patches", rebuilt),
            ("mean sq. difference of match", error),
        ],
        title=f"sq_l2_distance: {left.shape[0]} x {right.shape[0]} patch distances (5x5x3)",
    )
    return [path]
