"""Patch search backends for the PNN step: exact (vision_kernels kernel), PatchMatch, or FAISS.

``exact``      :func:`vision_kernels.ops.patch_nn`, plain or normalized (``alpha``), exact.
``patchmatch`` :func:`vision_kernels.ops.patch_match`, plain or normalized, approximate, seeded,
               warm-started from the previous iteration's matches when given.
``faiss``      FAISS on unfolded patches, ``alpha=None`` only: ``IndexFlatL2`` (exact in FAISS's own
               float32 GEMM arithmetic) or ``IndexIVFFlat`` (approximate); on the GPU when
               faiss-gpu is installed and the tensors are on CUDA, else faiss-cpu.
``auto``       ``exact`` while the brute-force work ``Nq * Nk * n`` (twice that with ``alpha``) stays
               within ``exact_limit``, else ``patchmatch`` (memory linear in the patch counts, works
               with ``alpha`` and masks); see :func:`choose_search`. The choice is logged on the
               ``vision_kernels.patchnn`` logger.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..ops.patch_nn import PatchNNResult, normalize_patch_size, patch_match, patch_nn
from .patches import unfold_patches

__all__ = [
    "SEARCH_METHODS",
    "EXACT_WORK_LIMIT",
    "VIDEO_EXACT_WORK_LIMIT",
    "choose_search",
    "resolve_search",
    "search_patches",
    "faiss_patch_nn",
]

SEARCH_METHODS = ("exact", "patchmatch", "faiss", "auto")

# Brute-force multiply-adds (Nq * Nk * n, doubled with alpha) up to which method="auto" uses the exact
# kernel. Both searches cost time linear in the number of queries, so the crossover is set by the
# number of keys: per query the exact kernel spends ~2.5 ns per key (7x7x3 patches with alpha, GEMM
# screening at ~1.2e11 multiply-adds/s on a 2-core CPU) and PatchMatch ~25 us, equal near 10^4 keys,
# i.e. 10^4 x 10^4 x 147 x 2 = 3e10 for square levels (images up to ~105 px). On a 250-px GPNN sample
# this keeps exact search on all but the three finest levels, at no extra time, and the approximate
# quality loss at ~2-3 % instead of ~6 % with a 1e9 limit (`benchmarks/run.py --family patch_nn`).
EXACT_WORK_LIMIT = 3e10
# VGPNN levels (3x7x7 patches): the exact kernel is slower per multiply-add on small space-time grids
# (2.1e10/s at 8x40x56, where PatchMatch was 2.6x faster at 1.7 % distance loss), so videos switch
# to PatchMatch earlier.
VIDEO_EXACT_WORK_LIMIT = 1e9

logger = logging.getLogger("vision_kernels.patchnn")


def choose_search(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    patch_size: int | Sequence[int],
    *,
    alpha: float | None = None,
    exact_limit: float = EXACT_WORK_LIMIT,
    query_count: int | None = None,
    log: bool = True,
) -> str:
    """The backend ``method="auto"`` uses for ``[T, H, W, C]`` shapes: ``"exact"`` when the exact
    search's work ``Nq * Nk * n`` (``n = pt ph pw C``; doubled by the two passes of ``alpha``) is at
    most ``exact_limit``, else ``"patchmatch"``. ``query_count`` overrides ``Nq`` (masked queries).
    The decision and its figures are logged (INFO) on the ``vision_kernels.patchnn`` logger."""
    pt, ph, pw = normalize_patch_size(patch_size, "vision_kernels.patchnn.choose_search")
    q, k = [int(s) for s in query_shape], [int(s) for s in key_shape]
    nq = math.prod(max(0, a - b + 1) for a, b in zip(q[:3], (pt, ph, pw), strict=True))
    nk = math.prod(max(0, a - b + 1) for a, b in zip(k[:3], (pt, ph, pw), strict=True))
    if query_count is not None:
        nq = min(nq, int(query_count))
    work = float(nq) * nk * pt * ph * pw * q[3] * (1 if alpha is None else 2)
    method = "exact" if work <= exact_limit else "patchmatch"
    if log:
        logger.info(
            "patch search %s: %d query x %d key patches of %dx%dx%dx%d, %.2g multiply-adds %s the exact limit %.2g",
            method,
            nq,
            nk,
            pt,
            ph,
            pw,
            q[3],
            work,
            "within" if method == "exact" else "above",
            exact_limit,
        )
    return method


def resolve_search(
    method: str,
    queries: Tensor | Sequence[int],
    keys: Tensor | Sequence[int],
    patch_size: int | Sequence[int],
    *,
    alpha: float | None = None,
    query_mask: Tensor | None = None,
    exact_limit: float = EXACT_WORK_LIMIT,
    log: bool = True,
) -> str:
    """The backend a search with ``method`` runs: ``method`` itself, or for ``"auto"`` the choice of
    :func:`choose_search` for these inputs or their shapes (logged when ``log``). The one place
    ``"auto"`` is resolved; callers keep the returned name (e.g. to reuse it for every iteration of a
    pyramid level)."""
    if method != "auto":
        return method
    count = None if query_mask is None else int(query_mask.sum())
    query_shape = tuple(queries.shape) if isinstance(queries, Tensor) else tuple(queries)
    key_shape = tuple(keys.shape) if isinstance(keys, Tensor) else tuple(keys)
    return choose_search(
        query_shape, key_shape, patch_size, alpha=alpha, exact_limit=exact_limit, query_count=count, log=log
    )


def search_patches(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int],
    *,
    method: str = "exact",
    alpha: float | None = None,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    seed: int = 0,
    init: Tensor | None = None,
    patchmatch_iterations: int = 6,
    faiss_index: str = "flat",
    exact_limit: float = EXACT_WORK_LIMIT,
) -> PatchNNResult:
    """Nearest key patch of every query patch with the chosen backend (inputs ``[T, H, W, C]``;
    ``method="auto"``: see :func:`choose_search`)."""
    method = resolve_search(
        method, queries, keys, patch_size, alpha=alpha, query_mask=query_mask, exact_limit=exact_limit, log=False
    )
    if method == "exact":
        return patch_nn(queries, keys, patch_size, alpha=alpha, query_mask=query_mask, key_mask=key_mask)
    if method == "patchmatch":
        return patch_match(
            queries,
            keys,
            patch_size,
            alpha=alpha,
            iterations=patchmatch_iterations,
            seed=seed,
            query_mask=query_mask,
            key_mask=key_mask,
            init=init,
        )
    if method == "faiss":
        if alpha is not None:
            raise ValueError(
                "vision_kernels.patchnn: argument 'alpha' must be None with method='faiss' (FAISS has no "
                f"normalized score), got {alpha}; use method='exact' or 'patchmatch'"
            )
        return faiss_patch_nn(queries, keys, patch_size, query_mask=query_mask, key_mask=key_mask, index=faiss_index)
    raise ValueError(f"vision_kernels.patchnn: argument 'method' must be one of {SEARCH_METHODS}, got {method!r}")


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss is a dependency of the [faiss] extra
        raise ImportError(
            "vision_kernels.patchnn: method='faiss' needs faiss (pip install faiss-cpu, or faiss-gpu for CUDA)"
        ) from error
    return faiss


def faiss_patch_nn(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int],
    *,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int = 8,
) -> PatchNNResult:
    """Plain patch nearest neighbours with FAISS on unfolded float32 patches (``[T, H, W, C]`` inputs).

    ``index="flat"``: ``IndexFlatL2`` (exhaustive; ties and rounding are FAISS's, not the exact
    arithmetic of :func:`patch_nn`). ``index="ivf"``: ``IndexIVFFlat`` with ``nlist`` cells (default
    ``4 sqrt(Nk)``) trained on the keys, ``nprobe`` visited per query (approximate). Returns
    :class:`PatchNNResult` with flat key indices and ``D = |q - k|^2 / n`` from FAISS.
    """
    faiss = _faiss()
    patch = normalize_patch_size(patch_size, "vision_kernels.patchnn.faiss_patch_nn")
    q = unfold_patches(queries, patch)  # [Tq', Hq', Wq', n]
    grid, n = q.shape[:3], q.shape[-1]
    q = q.reshape(-1, n)
    k = unfold_patches(keys, patch).reshape(-1, n)
    key_rows = torch.arange(k.shape[0], device=k.device)
    if key_mask is not None:
        key_rows = key_rows[key_mask.reshape(-1)]
        k = k[key_rows]
    query_rows = torch.arange(q.shape[0], device=q.device)
    if query_mask is not None:
        query_rows = query_rows[query_mask.reshape(-1)]
        q = q[query_rows]
    kn = k.float().contiguous().cpu().numpy()
    qn = q.float().contiguous().cpu().numpy()
    if index == "flat":
        searcher = faiss.IndexFlatL2(n)
    elif index == "ivf":
        cells = nlist or max(1, min(len(kn) // 39, int(4 * math.sqrt(len(kn)))))
        searcher = faiss.IndexIVFFlat(faiss.IndexFlatL2(n), n, cells)
        searcher.train(kn)
        searcher.nprobe = nprobe
    else:
        raise ValueError(
            f"vision_kernels.patchnn.faiss_patch_nn: argument 'index' must be 'flat' or 'ivf', got {index!r}"
        )
    if queries.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        searcher = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), queries.device.index or 0, searcher)
    searcher.add(kn)
    distances, found = searcher.search(qn, 1)
    found_t = torch.from_numpy(found[:, 0]).to(queries.device)
    index_out = torch.full((grid.numel(),), -1, dtype=torch.long, device=queries.device)
    distance_out = torch.full((grid.numel(),), math.inf, dtype=torch.float32, device=queries.device)
    hit = found_t >= 0
    index_out[query_rows[hit]] = key_rows[found_t[hit]]
    distance_out[query_rows[hit]] = torch.from_numpy(distances[:, 0]).to(queries.device)[hit] / n
    return PatchNNResult(index_out.view(grid), distance_out.view(grid))
