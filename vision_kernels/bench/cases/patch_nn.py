"""Benchmark cases of the patch_nn family: the exact search against the chunked PyTorch two-pass
reference and faiss-cpu IndexFlatL2, voting, PatchMatch (recall against the exact search), and
GPNN end to end (exact vs approximate search over several seeds, with the quality loss of the
approximate modes).

Sizes follow the issue: a 256x256 image against itself with 7x7 patches (quick: 96x96), GPNN on
a 250-px image (quick: 64 px). Figures that need the timed runs' outputs (recall, quality) are
computed lazily from the last output of each timed callable, so no extra run is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vision_kernels.bench.harness import Contenders, KeepLast, LazyMetrics, case
from vision_kernels.ops import patch_match, patch_nn, patch_vote
from vision_kernels.reference import patch_nn as reference

FAMILY = "patch_nn"
PATCH = 7
ALPHA = 0.005


def _image(name: str, size: int) -> torch.Tensor:
    from skimage import data, transform

    image = getattr(data, name)()
    resized = transform.resize(image[..., :3], (size, size), anti_aliasing=True)
    return torch.from_numpy(resized.astype(np.float32))  # [H, W, 3]


def _faiss_flat(keys: torch.Tensor) -> tuple[Any, np.ndarray] | None:
    """A faiss-cpu IndexFlatL2 over the unfolded key patches (built once, outside the timing)."""
    try:
        import faiss
    except ImportError:
        return None
    patches = reference.unfold_patches(keys[None], PATCH).reshape(-1, PATCH * PATCH * keys.shape[-1])
    vectors = np.ascontiguousarray(patches.numpy())
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    return index, vectors


def _search_contenders(queries: torch.Tensor, keys: torch.Tensor, alpha: float | None) -> Contenders:
    nq = (queries.shape[0] - PATCH + 1) * (queries.shape[1] - PATCH + 1)
    nk = (keys.shape[0] - PATCH + 1) * (keys.shape[1] - PATCH + 1)
    depth = PATCH * PATCH * keys.shape[-1]
    ours = KeepLast(lambda: patch_nn(queries, keys, PATCH, alpha=alpha))
    chunked = KeepLast(lambda: reference.patch_nn_chunked(queries[None], keys[None], PATCH, alpha=alpha))
    anchors: dict[str, Callable[[], Any]] = {}
    faiss_search = None
    built = _faiss_flat(keys)
    if built is not None:
        index, _ = built
        query_vectors = np.ascontiguousarray(reference.unfold_patches(queries[None], PATCH).reshape(-1, depth).numpy())
        faiss_search = KeepLast(lambda: index.search(query_vectors, 1))
        anchors["faiss-cpu IndexFlatL2 (search only)"] = faiss_search

    def metrics() -> dict[str, float | str]:
        found: dict[str, float | str] = {"exact": "yes (equals the float64 reference by construction, see tests)"}
        if ours.last is not None and chunked.last is not None:
            same = (ours.last.index.reshape(-1) == chunked.last[0].reshape(-1)).float().mean()
            found["same index as chunked ref"] = float(same)
        if ours.last is not None and faiss_search is not None and faiss_search.last is not None and alpha is None:
            same = (ours.last.index.reshape(-1) == torch.from_numpy(faiss_search.last[1][:, 0])).float().mean()
            found["same index as faiss"] = float(same)
        return found

    passes = 1 if alpha is None else 2
    return Contenders(
        ours=ours,
        reference=chunked,
        anchors=anchors,
        flops=2.0 * passes * nq * nk * depth,  # the GEMM-form work of one (or two) brute-force passes
        metrics=LazyMetrics(metrics),
    )


@case(FAMILY, "patch_nn 256x256 vs itself, 7x7, alpha=None (quick: 96)", repeats=2)
def search_self_plain(quick: bool) -> Contenders:
    image = _image("astronaut", 96 if quick else 256)
    return _search_contenders(image, image, None)


@case(FAMILY, "patch_nn 256x256 vs itself, 7x7, alpha=0.005 two-pass (quick: 96)", repeats=2)
def search_self_alpha(quick: bool) -> Contenders:
    image = _image("astronaut", 96 if quick else 256)
    return _search_contenders(image, image, ALPHA)


@case(FAMILY, "patch_nn 256x256 reshuffled vs source (GPNN-like queries), alpha=None (quick: 96)", repeats=2)
def search_reshuffled_plain(quick: bool) -> Contenders:
    image = _image("astronaut", 96 if quick else 256)
    shuffled = torch.roll(image, (37, -61), (0, 1)).flip(1).contiguous()
    return _search_contenders(shuffled, image, None)


@case(FAMILY, "patch_nn 256x256 reshuffled vs source, alpha=0.005 (quick: 96)", quick=False, repeats=2)
def search_reshuffled_alpha(quick: bool) -> Contenders:
    image = _image("astronaut", 256)
    shuffled = torch.roll(image, (37, -61), (0, 1)).flip(1).contiguous()
    return _search_contenders(shuffled, image, ALPHA)


@case(FAMILY, "patch_vote 256x256 7x7 mean / median (quick: 96)")
def vote(quick: bool) -> Contenders:
    size = 96 if quick else 256
    values = _image("coffee", size)[None]
    grid = (1, size - PATCH + 1, size - PATCH + 1)
    index = torch.randint(0, grid[1] * grid[2], grid, generator=torch.Generator().manual_seed(0))
    return Contenders(
        ours=lambda: patch_vote(values, index, PATCH),
        reference=lambda: reference.patch_vote(values, index, PATCH),
        anchors={"ours median": lambda: patch_vote(values, index, PATCH, reduction="median")},
        bytes_moved=(PATCH * PATCH + 1) * values.numel() * 4,  # every output gathers 49 proposals, writes once
    )


@case(FAMILY, "patch_match 256x256 reshuffled vs source, 6 iterations (quick: 96)", repeats=1)
def match(quick: bool) -> Contenders:
    size = 96 if quick else 256
    image = _image("astronaut", size)
    shuffled = torch.roll(image, (37, -61), (0, 1)).flip(1).contiguous()
    ours = KeepLast(lambda: patch_match(shuffled, image, PATCH, iterations=6, seed=0))
    exact = KeepLast(lambda: patch_nn(shuffled, image, PATCH))
    ours_alpha = KeepLast(lambda: patch_match(shuffled, image, PATCH, alpha=ALPHA, iterations=6, seed=0))

    def metrics() -> dict[str, float | str]:
        found: dict[str, float | str] = {}
        if ours.last is not None and exact.last is not None:
            found["recall vs exact"] = float((ours.last.index == exact.last.index).float().mean())
            found["mean D ratio"] = float(ours.last.distance.mean() / exact.last.distance.mean())
        if ours_alpha.last is not None:
            exact_alpha = patch_nn(shuffled, image, PATCH, alpha=ALPHA)  # after the timings
            found["recall vs exact (alpha)"] = float((ours_alpha.last.index == exact_alpha.index).float().mean())
        return found

    return Contenders(
        ours=ours,
        reference=exact,  # the exact kernel: what PatchMatch approximates
        anchors={"patch_match alpha=0.005": ours_alpha},
        metrics=LazyMetrics(metrics),
    )


GPNN_SEEDS = (1, 2, 3, 4)


def _quality_loss(d_approx: float, d_exact: float) -> float | str:
    """100 (D_approx / D_exact - 1), or a note when the exact samples are copies of the source (D ~ 0)."""
    return 100.0 * (d_approx / d_exact - 1.0) if d_exact > 1e-7 else "n/a (exact samples copy the source)"


@case(FAMILY, "GPNN generate 250 px x 4 seeds, exact vs auto vs PatchMatch search (quick: 64 px x 2)", repeats=1)
def gpnn_end_to_end(quick: bool) -> Contenders:
    """GPNN samples of one image with the exact search, ``search="auto"`` (exact on the coarse levels
    whose brute-force work is within ``exact_limit``, PatchMatch above) and PatchMatch on every level.
    The same seeds give the same coarsest noise, so with ``auto`` each approximate sample shares its
    exact twin's coarse layout and the quality loss (ratio of the mean nearest-patch distances over
    the seeds) measures the search, not sample-to-sample variation."""
    from vision_kernels.patchnn import GPNNConfig, generate, mean_patch_distance

    size = 64 if quick else 250
    seeds = GPNN_SEEDS[:2] if quick else GPNN_SEEDS
    image = _image("chelsea", size)
    modes = {name: GPNNConfig(search=name, progress=False) for name in ("exact", "auto", "patchmatch")}

    def samples(config: GPNNConfig) -> Callable[[], list[torch.Tensor]]:
        return lambda: [generate(image, seed=seed, config=config) for seed in seeds]

    runs = {name: KeepLast(samples(config)) for name, config in modes.items()}

    def metrics() -> dict[str, float | str]:
        if any(run.last is None for run in runs.values()):
            return {}
        distances = {name: [mean_patch_distance(out, image) for out in run.last] for name, run in runs.items()}
        mean = {name: sum(values) / len(values) for name, values in distances.items()}
        figures: dict[str, float | str] = {"seeds": ",".join(str(seed) for seed in seeds)}
        for name in modes:
            figures[f"mean patch D {name}"] = mean[name]
        for name in ("auto", "patchmatch"):
            figures[f"{name} quality loss %"] = _quality_loss(mean[name], mean["exact"])
            per_seed = (_quality_loss(a, e) for a, e in zip(distances[name], distances["exact"], strict=True))
            figures[f"{name} loss per seed %"] = " ".join(
                f"{v:+.1f}" if isinstance(v, float) else "n/a" for v in per_seed
            )
        return figures

    return Contenders(
        ours=runs["exact"],
        anchors={"GPNN search=auto": runs["auto"], "GPNN search=patchmatch": runs["patchmatch"]},
        metrics=LazyMetrics(metrics),
        single_run=("ours", "GPNN search=auto", "GPNN search=patchmatch"),
    )
