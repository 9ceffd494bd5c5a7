"""Benchmark case of the dataset-scale ``clip decompose`` command (issue 13; family "attention_decomp").

Target: images per second of :func:`vision_kernels.clip.runs.decompose_run` (terms summed over
tokens, float16 storage, shards written and checksummed, model built inside the call) over a folder
of 2,000 generated 256 px images at batch 64 with 2 DataLoader workers, against a plain open_clip
``encode_image`` loop over the same DataLoader (model built beforehand): at least 0.8x its throughput,
i.e. anchor time / our time >= 0.8. Peak memory must not grow with the number of images: the
metrics compare the peak of a run over a quarter of the images with the full run's.

2 ranks against 1: ``python benchmarks/clip_runs_scaling.py`` (torchrun, gloo).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vision_kernels.bench.harness import Contenders, LazyMetrics, case, peak_memory


def make_image_folder(root: Path, count: int, size: int = 256, classes: int = 10) -> Path:
    """``count`` random PNG images in ``classes`` class folders under ``root``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:05d}.png")
    return root


@functools.lru_cache(maxsize=2)
def _workspace(count: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="vk-bench-clip-runs-"))
    atexit.register(shutil.rmtree, root, True)
    make_image_folder(root / "images", count)
    return root


def _run_case(count: int, batch: int, workers: int, quick: bool) -> Contenders:
    import logging

    from vision_kernels.clip.data import image_batches, model_transform, open_image_source
    from vision_kernels.clip.runs import ModelChoice, decompose_run, load_model

    logging.getLogger().setLevel(logging.ERROR)  # random weights on purpose
    root = _workspace(count)
    choice = ModelChoice("ViT-B-32")
    calls = [0]

    def decompose_folder(source: Path | str = root / "images") -> Path:
        calls[0] += 1
        out = root / f"run-{calls[0]}"
        shutil.rmtree(out, ignore_errors=True)
        manifest = decompose_run(
            out, source, model=choice, dtype="float16", batch_size=batch, workers=workers, shard_size=1024
        )
        shutil.rmtree(out, ignore_errors=True)
        return manifest

    loaded = load_model(choice, function="bench")
    source = open_image_source(root / "images")
    transform = model_transform(loaded)

    model: Any = loaded.model  # an open_clip CLIP (open_clip ships no type information)

    def encode_loop() -> torch.Tensor:
        outputs = []
        with torch.no_grad():
            for b in image_batches(source, transform, batch_size=batch, workers=workers):
                outputs.append(model.encode_image(b.images).half())
        return torch.cat(outputs)

    def memory_scaling() -> dict[str, float | str]:
        if quick:
            return {"images": count, "batch": batch, "workers": workers}
        listing = root / "quarter.txt"
        listing.write_text("".join(f"images/{key}\n" for key in source.keys[: count // 4]))
        quarter = peak_memory(lambda: decompose_folder(listing))
        full = peak_memory(decompose_folder)
        return {
            "images": count,
            "batch": batch,
            "workers": workers,
            "peak_MiB_quarter_images": round(quarter, 1),
            "peak_MiB_all_images": round(full, 1),
        }

    return Contenders(
        ours=decompose_folder,
        anchors={"open_clip encode_image loop (same DataLoader)": encode_loop},
        metrics=LazyMetrics(memory_scaling),
        single_run=() if quick else ("ours", "open_clip encode_image loop (same DataLoader)"),
    )


@case(
    "attention_decomp",
    "clip decompose ViT-B-32, 2,000 images, batch 64, fp16 shards vs encode_image loop (quick: 16 images, batch 8)",
    repeats=1,
)
def clip_decompose_folder(quick: bool) -> Contenders:
    if quick:
        return _run_case(count=16, batch=8, workers=0, quick=True)
    return _run_case(count=2000, batch=64, workers=2, quick=False)
