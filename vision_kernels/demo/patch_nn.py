"""Demo section for the patch_nn family: GPNN on skimage sample images.

* generation: random samples of one image, four seeds side by side for the default start (noise
  alone), for the coarsest source level plus noise 2.5 and for the official code's start (the
  source plus noise 0.75, which copies the source), captioned with each sample's identity fraction and each
  setting's diversity (vision_kernels.patchnn.metrics);
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

from .._files import atomic_path
from ..ops import patch_match, patch_nn
from ..patchnn import (
    GPNNConfig,
    diversity,
    generate,
    inpaint,
    mean_patch_distance,
    retarget,
    sample_metrics,
    write_image,
)
from ._figures import save_panels

ORDER = 40  # place in the demo run (vision_kernels.demo discovers the sections)


def _image(name: str, height: int) -> torch.Tensor:
    from skimage import data, transform

    image = getattr(data, name)()
    width = round(height * image.shape[1] / image.shape[0])
    return torch.from_numpy(transform.resize(image[..., :3], (height, width), anti_aliasing=True).astype(np.float32))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.clamp(0, 1).numpy()


def _generation_settings(config: GPNNConfig) -> list[tuple[str, GPNNConfig]]:
    """The generation rows of the demo: the default config and the settings it replaced (issue 15)."""
    return [
        ("default: noise alone (mean colour + noise 0.75)", config),
        ("coarsest source + noise 2.5", config.with_(initial_guess="source", noise_std=2.5)),
        ("official: coarsest source + noise 0.75 (before issue 15)", config.with_(initial_guess="source")),
    ]


def _save_grid(
    path: Path, source: tuple[str, np.ndarray], rows: list[tuple[str, list[tuple[str, np.ndarray]]]]
) -> Path:
    """The source, then one row of captioned samples per setting, each row titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(panels) for _, panels in rows)
    figure, axes = plt.subplots(len(rows) + 1, columns, figsize=(3.0 * columns, 2.6 * (len(rows) + 1)), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes[0, 0].imshow(np.clip(source[1], 0, 1))
    axes[0, 0].set_title(source[0], fontsize=8)
    for r, (title, panels) in enumerate(rows, start=1):
        for c, (caption, image) in enumerate(panels):
            axes[r, c].imshow(np.clip(image, 0, 1))
            axes[r, c].set_title(f"{title}\n{caption}" if c == 0 else f"\n{caption}", fontsize=7, loc="left")
    figure.suptitle("GPNN random samples: identity fraction per sample, diversity per setting", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
    return path


def run(out_dir: Path, quick: bool) -> list[Path]:
    height = 48 if quick else 128
    config = GPNNConfig(iterations=3 if quick else 10, progress=False)
    files: list[Path] = []

    source = _image("chelsea", height)
    seeds = (0, 1, 2, 3)  # seed 0: the official start returned chelsea itself at 36 and 128 px
    rows = []
    for label, setting in _generation_settings(config):
        started = time.perf_counter()
        samples = [generate(source, seed=seed, config=setting) for seed in seeds]
        seconds = (time.perf_counter() - started) / len(samples)
        scores = [sample_metrics(x, source, setting.patch) for x in samples]
        captions = [
            f"seed {s}: identity {m.identity_fraction:.2f}, D {m.patch_distance:.1e}"
            for s, m in zip(seeds, scores, strict=True)
        ]
        title = f"{label}: diversity {diversity(samples, source):.2f} ({seconds:.1f} s each)"
        rows.append((title, list(zip(captions, [_np(x) for x in samples], strict=True))))
        if setting == config:
            files.append(write_image(out_dir / "gpnn_sample.png", samples[0]))
    files.append(_save_grid(out_dir / "gpnn_generation.png", ("source", _np(source)), rows))

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
