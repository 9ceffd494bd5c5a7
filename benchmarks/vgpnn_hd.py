#!/usr/bin/env python
"""VGPNN on an HD clip: time per pyramid level, peak memory, and the approximate search's quality loss.

    python benchmarks/vgpnn_hd.py                                   # 30 x 360 x 640, the issue-14 size
    python benchmarks/vgpnn_hd.py --frames 8 --height 64 --width 96 # a small run (seconds)
    python benchmarks/vgpnn_hd.py --crop-check --crop 10 72 96      # PatchMatch vs exact on a crop

The clip is synthetic (:func:`vision_kernels.patchnn.moving_shapes`: shapes moving over a texture).
``generate_video`` runs with the defaults of :func:`vision_kernels.patchnn.video_config` (search
``"auto"``: exact while a level is small, PatchMatch above). For every level the script prints its
output shape, the search the automatic choice used, the number of PNN steps and their time; the
peak resident memory (psutil RSS, sampled every 50 ms, and ``ru_maxrss``) is checked against
``--memory-limit-gb`` (16 by default).

``--crop-check`` measures the approximate search's loss on a crop at the finest level's first PNN
step: the mean nearest-patch distance ``D`` that PatchMatch finds against the exact search's,
``D(PatchMatch) / D(exact) - 1``, which must stay within 5 %. (Comparing whole samples made with
either search says little on the synthetic clip: both come out made of exact source patches,
distance 0.) ``--probe-finest`` measures the peak memory of one step at the finest level.

Timings on a shared machine are "loaded": compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class RSSPeak:
    """Peak resident memory of this process, sampled in a background thread (psutil)."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak = self._process.memory_info().rss
        self.start = self.peak
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RSSPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


class LevelTimer:
    """Wraps ``gpnn.pnn_step`` (the PNN step ``synthesize`` calls) to time every step and group the
    steps by level (the query shape) with the search method used there."""

    def __init__(self) -> None:
        self.levels: list[dict[str, Any]] = []
        self._original: Callable[..., Any] | None = None
        self._rss: Any = None

    def __enter__(self) -> LevelTimer:
        import psutil

        from vision_kernels.patchnn import gpnn

        self._rss = psutil.Process()
        self._original = gpnn.pnn_step
        original = self._original

        def timed(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, config: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = original(queries, keys, values, config, **kwargs)
            elapsed = time.perf_counter() - started
            shape = tuple(int(s) for s in values.shape[:3])
            out_shape = tuple(int(s) for s in result[0].shape[:3])
            if kwargs.get("init") is None or not self.levels or self.levels[-1]["output"] != out_shape:
                if self.levels:
                    self._report(self.levels[-1])
                self.levels.append(
                    {"output": out_shape, "source": shape, "search": config.search, "steps": 0, "seconds": 0.0}
                )
            level = self.levels[-1]
            level["steps"] += 1
            level["seconds"] += elapsed
            level["rss_gib"] = round(self._rss.memory_info().rss / 2**30, 3)
            return result

        gpnn.pnn_step = timed  # synthesize looks the name up in its module at call time
        return self

    @staticmethod
    def _report(level: dict[str, Any]) -> None:
        t, h, w = level["output"]
        print(
            f"  level {t:3d}x{h:4d}x{w:4d}  {level['search']:<10s} {level['steps']} steps "
            f"{level['seconds']:8.1f} s  rss {level['rss_gib']:.2f} GiB (loaded)",
            flush=True,
        )

    def __exit__(self, *exc: object) -> None:
        from vision_kernels.patchnn import gpnn

        gpnn.pnn_step = self._original  # type: ignore[assignment]
        if self.levels:
            self._report(self.levels[-1])


def hd_run(frames: int, height: int, width: int, seed: int, search: str, limit_gb: float) -> dict[str, Any]:
    from vision_kernels.patchnn import generate_video, moving_shapes, video_config

    video = moving_shapes(frames, height, width, seed=0, shapes=6, speed=3.0)  # [T, H, W, 3]
    config = video_config(video.shape, search=search, progress=False)
    print(
        f"vgpnn_hd: {frames}x{height}x{width} clip, patch {config.patch}, search {config.search}, "
        f"exact limit {config.exact_limit:.2g} (timings loaded)",
        flush=True,
    )
    started = time.perf_counter()
    with RSSPeak() as rss, LevelTimer() as timer:
        sample = generate_video(video, seed=seed, config=config)
    total = time.perf_counter() - started
    for i, level in enumerate(timer.levels):  # coarsest first, as run; level 0 is the finest
        level["level"] = len(timer.levels) - 1 - i
    peak_gib = rss.peak / 2**30
    maxrss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"vgpnn_hd: total {total:.1f} s (loaded); peak RSS {peak_gib:.2f} GiB (ru_maxrss {maxrss_gib:.2f} GiB, "
        f"limit {limit_gb:g} GiB); output {tuple(sample.shape)}",
        flush=True,
    )
    return {
        "shape": [frames, height, width],
        "patch": list(config.patch),
        "seconds_total_loaded": round(total, 2),
        "peak_rss_gib": round(peak_gib, 3),
        "ru_maxrss_gib": round(maxrss_gib, 3),
        "start_rss_gib": round(rss.start / 2**30, 3),
        "within_limit": max(peak_gib, maxrss_gib) <= limit_gb,
        "levels_coarsest_first": timer.levels,
        "output_finite": bool(torch.isfinite(sample).all()),
    }


def probe_finest(frames: int, height: int, width: int, pm_iterations: int, limit_gb: float) -> dict[str, Any]:
    """Peak memory of the finest level alone, the largest of the run: the source pyramid of every
    level (as ``synthesize`` builds it), the keys (the level below, upscaled), one cold PatchMatch
    search with ``pm_iterations`` steps (memory does not depend on the steps) and the median vote."""
    from vision_kernels.patchnn import moving_shapes, pyramid_plan, video_config
    from vision_kernels.patchnn.gpnn import pnn_step
    from vision_kernels.patchnn.pyramid import build_pyramid, resize

    video = moving_shapes(frames, height, width, seed=0, shapes=6, speed=3.0)
    config = video_config(video.shape, search="patchmatch", patchmatch_iterations=pm_iterations, progress=False)
    started = time.perf_counter()
    with RSSPeak() as rss:
        shapes, _ = pyramid_plan(video.shape, video.shape, config)
        sources = build_pyramid(video, shapes)
        keys = resize(sources[1], shapes[0])
        query = resize(torch.roll(sources[1], (1, 9, 13), (0, 1, 2)), shapes[0])  # a rearranged upscaled guess
        build_seconds = time.perf_counter() - started
        step_started = time.perf_counter()
        voted, index = pnn_step(query, keys, sources[0], config, seed=0)
        step_seconds = time.perf_counter() - step_started
    peak_gib = rss.peak / 2**30
    print(
        f"vgpnn_hd probe: finest level {tuple(shapes[0])} of {len(shapes)} levels, one PNN step (PatchMatch "
        f"{pm_iterations} steps, cold) {step_seconds:.1f} s (loaded), peak RSS {peak_gib:.2f} GiB "
        f"(before {rss.start / 2**30:.2f} GiB, limit {limit_gb:g} GiB)",
        flush=True,
    )
    return {
        "finest_shape": list(shapes[0]),
        "levels": len(shapes),
        "pm_iterations": pm_iterations,
        "pyramid_seconds_loaded": round(build_seconds, 2),
        "step_seconds_loaded": round(step_seconds, 2),
        "query_patches": int(index.numel()),
        "peak_rss_gib": round(peak_gib, 3),
        "start_rss_gib": round(rss.start / 2**30, 3),
        "within_limit": peak_gib <= limit_gb,
        "output_finite": bool(torch.isfinite(voted).all()),
    }


def crop_check(crop: tuple[int, int, int], seeds: list[int], pm_iterations: int) -> dict[str, Any]:
    """The approximate search's loss on a crop, at a level's first PNN step (the costliest search):
    queries are a rearranged, upscaled coarser level (as GPNN's guess when it enters a level), keys
    the upscaled coarser source; the mean nearest-patch distance ``D`` found by PatchMatch (the
    automatic choice above the exact limit; ``pm_iterations`` steps, cold start) against the exact
    search's, per seed of the rearrangement."""
    from vision_kernels.ops import patch_match, patch_nn
    from vision_kernels.patchnn import moving_shapes, pyramid_plan, video_config
    from vision_kernels.patchnn.pyramid import build_pyramid, resize

    frames, height, width = crop
    video = moving_shapes(frames, height, width, seed=0, shapes=3, speed=3.0)
    config = video_config(video.shape)
    shapes, _ = pyramid_plan(video.shape, video.shape, config)
    sources = build_pyramid(video, shapes[:2])
    keys = resize(sources[1], shapes[0])
    rows = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        shift = [int(torch.randint(1, max(2, s // 2), (1,), generator=generator)) for s in shapes[1]]
        noise = 0.05 * torch.randn(sources[1].shape, generator=generator)
        queries = resize((torch.roll(sources[1], shift, (0, 1, 2)) + noise).clamp(0, 1), shapes[0])
        started = time.perf_counter()
        exact = float(patch_nn(queries, keys, config.patch).distance.mean())
        exact_seconds = time.perf_counter() - started
        started = time.perf_counter()
        approx = float(patch_match(queries, keys, config.patch, iterations=pm_iterations, seed=seed).distance.mean())
        rows.append(
            {
                "seed": seed,
                "exact": exact,
                "patchmatch": approx,
                "loss": approx / max(exact, 1e-12) - 1,
                "exact_seconds_loaded": round(exact_seconds, 2),
                "patchmatch_seconds_loaded": round(time.perf_counter() - started, 2),
            }
        )
        print(f"  crop seed {seed}: {rows[-1]}", flush=True)
    loss = sum(r["patchmatch"] for r in rows) / max(sum(r["exact"] for r in rows), 1e-12) - 1
    print(
        f"vgpnn_hd crop {frames}x{height}x{width}, finest-level search, patch {config.patch}: mean nearest-patch "
        f"distance PatchMatch ({pm_iterations} steps) vs exact: {100 * loss:+.2f} % (limit 5 %)",
        flush=True,
    )
    return {
        "crop": list(crop),
        "pm_iterations": pm_iterations,
        "rows": rows,
        "loss": loss,
        "within_5_percent": loss <= 0.05,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--search", default="auto", choices=("auto", "exact", "patchmatch"))
    parser.add_argument("--memory-limit-gb", type=float, default=16.0)
    parser.add_argument("--skip-run", action="store_true", help="only the crop check")
    parser.add_argument("--crop-check", action="store_true", help="PatchMatch vs exact on a crop")
    parser.add_argument("--crop", type=int, nargs=3, default=(10, 72, 96), metavar=("T", "H", "W"))
    parser.add_argument("--crop-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--crop-pm-iterations", type=int, default=6, help="PatchMatch steps (video_config's: 6)")
    parser.add_argument(
        "--probe-finest", action="store_true", help="instead of the whole run: memory of one step at the finest level"
    )
    parser.add_argument("--probe-pm-iterations", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the figures here (atomically)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "label": "loaded"}
    if args.crop_check:
        results["crop_check"] = crop_check(tuple(args.crop), args.crop_seeds, args.crop_pm_iterations)
    if args.probe_finest:
        results["probe"] = probe_finest(
            args.frames, args.height, args.width, args.probe_pm_iterations, args.memory_limit_gb
        )
    elif not args.skip_run:
        results["hd"] = hd_run(args.frames, args.height, args.width, args.seed, args.search, args.memory_limit_gb)
    if args.json:
        from vision_kernels._files import atomic_open

        with atomic_open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    ok = (
        results.get("hd", {}).get("within_limit", True)
        and results.get("probe", {}).get("within_limit", True)
        and results.get("crop_check", {}).get("within_5_percent", True)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
