"""Demo section for VGPNN: a short synthetic video (moving shapes on a texture) generated with three
seeds (identity fraction of each and their diversity in the captions), retargeted (longer and
wider), and inpainted through a space-time hole.

Writes the videos as GIF (and MP4 when the quick flag is off), plus a frame-strip PNG per result
whose caption gives the mean nearest-patch distance to the input (every output patch should come
from the input) and the frame-to-frame change relative to the input's (temporal coherence).
Quick mode: a 8 x 32 x 40 video with 3x5x5 patches and 2 PNN steps per level; full mode: a
12 x 64 x 88 video with the paper's defaults (3x7x7 patches, 5 steps per level).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .._files import save_figure
from ..patchnn import (
    diversity,
    generate_video,
    identity_fraction,
    inpaint_video,
    mean_patch_distance,
    moving_shapes,
    retarget_video,
    video_config,
    write_video,
)
from ..patchnn.video_io import write_frame_strip

ORDER = 70  # place in the demo run (vision_kernels.demo discovers the sections)

FPS = 8.0


def _change(x: torch.Tensor) -> float:
    return float((x[1:] - x[:-1]).abs().mean())


def _strip(path: Path, rows: list[tuple[str, torch.Tensor]], source: torch.Tensor, patch: tuple, title: str) -> Path:
    """Frame strips of several videos stacked vertically, one caption line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(rows), 1, figsize=(9, 1.9 * len(rows)), squeeze=False)
    for axis, (caption, video) in zip(axes[:, 0], rows, strict=True):
        strip = path.with_name(f".{path.stem}_row.png")
        write_frame_strip(strip, video, count=6)
        axis.imshow(plt.imread(strip))
        strip.unlink()
        details = ""
        if video is not source:
            details = (
                f"  |  patch D to input {mean_patch_distance(video, source, patch):.1e}"
                f"  |  frame change {_change(video) / _change(source):.2f}x input's"
            )
            if video.shape == source.shape:
                details += f"  |  mean |x - input| {float((video - source).abs().mean()):.3f}"
        axis.set_title(f"{caption} {tuple(video.shape[:3])}{details}", fontsize=8)
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)
    plt.close(figure)
    return path


def run(out_dir: Path, quick: bool) -> list[Path]:
    shape = (8, 32, 40) if quick else (12, 64, 88)
    source = moving_shapes(*shape, seed=0)
    if quick:
        config = video_config(shape, patch_size=(3, 5, 5), coarsest=12, iterations=2, progress=False)
    else:
        config = video_config(shape, progress=False)
    suffixes = (".gif",) if quick else (".gif", ".mp4")
    files: list[Path] = []

    def save(name: str, video: torch.Tensor) -> None:
        for suffix in suffixes:
            files.append(write_video(out_dir / f"{name}{suffix}", video, fps=FPS))

    save("input", source)
    seeds = (1, 2, 3)
    started = time.perf_counter()
    samples = [generate_video(source, seed=seed, config=config) for seed in seeds]
    seconds = (time.perf_counter() - started) / len(samples)
    for seed, sample in zip(seeds, samples, strict=True):
        save(f"generated_seed{seed}", sample)
    spread = diversity(samples, source)
    generated = [
        (f"generated, seed {seed}: identity {identity_fraction(sample, source, config.patch):.2f}", sample)
        for seed, sample in zip(seeds, samples, strict=True)
    ]
    longer = retarget_video(source, (shape[0] + shape[0] // 2, *shape[1:]), config=config)
    wider = retarget_video(source, (shape[0], shape[1], round(shape[2] * 1.5)), config=config)
    save("retarget_longer", longer)
    save("retarget_wider", wider)
    mask = torch.zeros(shape, dtype=torch.bool)
    t, h, w = shape
    mask[t // 4 : 3 * t // 4, h // 3 : h // 3 + h // 4, w // 3 : w // 3 + w // 4] = True
    damaged = source.clone()
    damaged[mask] = torch.tensor([1.0, 0.0, 1.0])
    filled = inpaint_video(damaged, mask, config=config.with_(alpha=1.0))
    unchanged = bool(torch.equal(filled[~mask], damaged[~mask]))
    save("inpainted", filled)
    files.append(
        _strip(
            out_dir / "vgpnn_frames.png",
            [
                ("input", source),
                *generated,
                ("retargeted longer", longer),
                ("retargeted wider", wider),
                ("hole (magenta)", damaged),
                (f"inpainted (outside the hole unchanged: {unchanged})", filled),
            ],
            source,
            config.patch,
            f"VGPNN on a synthetic video, patches {config.patch}; generated: diversity {spread:.2f} over "
            f"{len(seeds)} seeds, {seconds:.1f} s each",
        )
    )
    return files
