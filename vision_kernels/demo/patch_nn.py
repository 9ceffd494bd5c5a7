"""Demo section for the patch_nn family: GPNN on skimage sample images.

* generation: random samples of one image (different seeds);
* retargeting: the same image made wider and narrower without stretching its content;
* inpainting: a hole filled from the rest of the image (pixels outside the hole untouched);
* search: where each patch of a reshuffled image comes from, exact search vs PatchMatch.

Every panel states the mean nearest-patch distance of the output to the source (the quality
measure of the tests). Quick mode uses ~48-px images and 3 PNN steps per level.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..ops import patch_match, patch_nn
from ..patchnn import GPNNConfig, generate, inpaint, mean_patch_distance, retarget, write_image
from ._figures import save_panels


def _image(name: str, height: int) -> torch.Tensor:
    from skimage import data, transform

    image = getattr(data, name)()
    width = round(height * image.shape[1] / image.shape[0])
    return torch.from_numpy(transform.resize(image[..., :3], (height, width), anti_aliasing=True).astype(np.float32))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).numpy()


def run(out_dir: Path, quick: bool) -> list[Path]:
    height = 48 if quick else 128
    config = GPNNConfig(iterations=3 if quick else 10, progress=False)
    files: list[Path] = []

    source = _image("chelsea", height)
    started = time.perf_counter()
    samples = [generate(source, seed=seed, config=config) for seed in (1, 2, 3)]
    seconds = (time.perf_counter() - started) / len(samples)
    panels = [("source", _np(source))] + [
        (f"seed {s}: patch D {mean_patch_distance(x, source):.1e}", _np(x))
        for s, x in zip((1, 2, 3), samples, strict=True)
    ]
    files.append(
        save_panels(out_dir / "gpnn_generation.png", panels, title=f"GPNN random samples ({seconds:.1f} s each)")
    )
    files.append(write_image(out_dir / "gpnn_sample.png", samples[0]))

    scene = _image("astronaut", height)
    wide = retarget(scene, (height, round(1.6 * scene.shape[1])), config=config)
    narrow = retarget(scene, (height, round(0.7 * scene.shape[1])), config=config)
    files.append(
        save_panels(
            out_dir / "gpnn_retargeting.png",
            [
                ("source", _np(scene)),
                (f"wider: patch D {mean_patch_distance(wide, scene):.1e}", _np(wide)),
                (f"narrower: patch D {mean_patch_distance(narrow, scene):.1e}", _np(narrow)),
            ],
            title="GPNN retargeting (no stretching: every patch comes from the source)",
        )
    )

    coffee = _image("coffee", height)
    hole = torch.zeros(coffee.shape[:2], dtype=torch.bool)
    h, w = coffee.shape[:2]
    hole[h // 3 : h // 3 + h // 5, w // 2 : w // 2 + w // 6] = True
    damaged = coffee.clone()
    damaged[hole] = torch.tensor([1.0, 0.0, 1.0])
    filled = inpaint(damaged, hole, config=config.with_(alpha=1.0))
    unchanged = bool(torch.equal(filled[~hole], damaged[~hole]))
    files.append(
        save_panels(
            out_dir / "gpnn_inpainting.png",
            [("input with hole", _np(damaged)), (f"filled (outside unchanged: {unchanged})", _np(filled))],
            title="GPNN inpainting",
        )
    )

    shuffled = torch.roll(source, (height // 3, -height // 2), (0, 1)).flip(1).contiguous()
    started = time.perf_counter()
    exact = patch_nn(shuffled, source, 7)
    exact_s = time.perf_counter() - started
    started = time.perf_counter()
    approx = patch_match(shuffled, source, 7, iterations=6, seed=0)
    approx_s = time.perf_counter() - started
    grid_w = source.shape[1] - 6
    recall = float((approx.index == exact.index).float().mean())
    files.append(
        save_panels(
            out_dir / "patch_search.png",
            [
                ("queries (reshuffled)", _np(shuffled)),
                (f"exact: source x ({exact_s * 1e3:.0f} ms)", (exact.index % grid_w).float().numpy()),
                (f"PatchMatch: source x ({approx_s * 1e3:.0f} ms)", (approx.index % grid_w).float().numpy()),
                (
                    f"PatchMatch D / exact D (recall {recall:.2f})",
                    (approx.distance / exact.distance.clamp(min=1e-6)).numpy(),
                ),
            ],
            title="Nearest source patch of every query patch",
        )
    )
    return files
