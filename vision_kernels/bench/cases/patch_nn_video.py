"""Benchmark cases of VGPNN (family ``vgpnn``): space-time PatchMatch against the exact search at a
small size (recall and speed, quick mode), and generation from a 13 x 144 x 256 video with the
paper's defaults (time and peak memory; full mode only, where the automatic search picks
PatchMatch on the finer levels).

Inputs are synthetic moving-shapes videos (:func:`vision_kernels.patchnn.moving_shapes`).
"""

from __future__ import annotations

import torch

from vision_kernels.bench.harness import Contenders, KeepLast, LazyMetrics, case
from vision_kernels.ops import patch_match, patch_nn

FAMILY = "patch_nn"
PATCH = (3, 7, 7)


@case(FAMILY, "space-time PatchMatch vs exact search, 8x40x56 video, 3x7x7 patches (quick and full)", repeats=1)
def patchmatch_recall(quick: bool) -> Contenders:
    from vision_kernels.patchnn import moving_shapes

    source = moving_shapes(8, 40, 56, seed=0)
    # GPNN-like queries: another arrangement of the same content (shapes elsewhere, texture shifted).
    queries = torch.roll(moving_shapes(8, 40, 56, seed=0, shapes=3, speed=3.0), (2, 11, -17), (0, 1, 2)).contiguous()
    approx = KeepLast(lambda: patch_match(queries, source, PATCH, iterations=6, seed=0))
    exact = KeepLast(lambda: patch_nn(queries, source, PATCH))
    nq = (8 - 2) * (40 - 6) * (56 - 6)

    def metrics() -> dict[str, float | str]:
        if approx.last is None or exact.last is None:
            return {}
        return {
            "recall vs exact": float((approx.last.index == exact.last.index).float().mean()),
            "mean D ratio (approx / exact)": float(
                approx.last.distance.mean() / exact.last.distance.mean().clamp(min=1e-12)
            ),
            "query patches": float(nq),
        }

    return Contenders(
        ours=approx,
        reference=exact,  # the exact kernel, which PatchMatch approximates (speedup vs ref = exact / PatchMatch)
        metrics=LazyMetrics(metrics),
    )


@case(FAMILY, "VGPNN generate 13x144x256 video, paper defaults (3x7x7, auto search), full only", quick=False, repeats=1)
def generate_full(quick: bool) -> Contenders:
    from vision_kernels.patchnn import generate_video, moving_shapes, video_config

    video = moving_shapes(13, 144, 256, seed=0)
    config = video_config(video.shape, progress=False)
    run = KeepLast(lambda: generate_video(video, seed=1, config=config))

    def metrics() -> dict[str, float | str]:
        if run.last is None:
            return {}
        found = patch_match(run.last, video, PATCH, iterations=6, seed=0)  # exact search would take hours here
        return {
            "mean patch D to input (PatchMatch, an upper bound)": float(found.distance.mean()),
            "mean |output - input|": float((run.last - video).abs().mean()),
            "peak memory budget MiB": 8192.0,
        }

    # A minutes-long call: timed once, together with its peak memory.
    return Contenders(ours=run, metrics=LazyMetrics(metrics), single_run=("ours",))
