"""Fitting the weights2weights space: per-dimension standardization and PCA of the standardized weights.

With ``X`` the ``[N, D]`` weight matrix (N models, D LoRA parameters), ``mu`` and ``sigma`` its
per-dimension mean and unbiased standard deviation (``sigma`` floored), and
``Z = (X - mu) / sigma``, the space keeps the first K right singular vectors ``V`` of ``Z``
(``Z ~ U S V^T``). Because N (thousands of models) is far below D (~10^5 parameters), both fits
work on the N x N side, on the operator ``G = Z Z^T = U S^2 U^T``:

* :func:`fit_streaming` (any size; reads row blocks from disk): randomized range finder with power
  iterations on G, seeded: ``Q = orth(G Omega)``, then ``Q = orth(G Q)`` ``n_iter`` times, then the
  final small SVD (Rayleigh-Ritz): ``G`` restricted to ``span(Q)`` is ``T = Q^T G Q`` (l x l,
  l = K + oversample), ``T = W L W^T``, ``U = Q W``, ``S = sqrt(L)``, and
  ``V = Z^T U S^-1`` from one more pass. G is applied either from an N x N cache built by streaming
  pairs of row blocks (when ``4 N^2`` bytes fit ``gram_memory``; then power iterations are nearly
  free) or as ``Z (Z^T Q)`` with two streaming passes (any N; there the final pass also gives T).
* :func:`fit_exact`: G in float64 and its full eigendecomposition: the exact answer for small
  datasets, used to check the streaming fit.

Under torch.distributed (``torchrun``, see :mod:`vision_kernels.runs.distributed`) each rank
streams only its own row blocks (blocks ``rank::world``): the column statistics (per-rank count,
mean and centered sum of squares, merged exactly), the sketch products ``Z^T Q`` (``[D, l]``) and
``Z W`` (``[N, l]``, each rank filling its rows) and the coefficients ``Z V`` are summed over ranks
with ``all_reduce``; rows are never gathered. G is then applied by the two-pass operator (a Gram
cache would need pairs of row blocks owned by different ranks). Every rank ends with the same space.

Neither fit ever holds the standardized matrix: each block of rows is standardized on the fly by
the native dequantize + standardize kernel and fed to the GEMMs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._progress import progress
from ..ops.pca_project import standardize_block
from ..runs import distributed
from .layout import LoraLayout
from .space import WeightSpace
from .storage import RowMatrix, open_rows

__all__ = ["fit_streaming", "fit_exact", "column_statistics", "ColumnStatistics", "principal_angles"]

_STATS_ROWS = 256  # rows per sub-block of the statistics pass (bounds its float temporaries)


@dataclass
class ColumnStatistics:
    """Per-dimension mean, unbiased std (floored) and what the floor did."""

    mean: Tensor  # [D] float64
    std: Tensor  # [D] float64, after the floor
    raw_std: Tensor  # [D] float64, before the floor
    floor: float
    floored: int  # dimensions raised to the floor
    total_variance: float  # ||Z||_F^2 = sum_d (N - 1) raw_std_d^2 / std_d^2


def _block_rows(dims: int, memory: int, share: float) -> int:
    return max(1, int(memory * share) // (4 * dims))


def _describe_row(rows: RowMatrix, row: int, column: int) -> str:
    text = f"row {row}"
    names = rows.metadata.get("names") if hasattr(rows, "metadata") else None
    if names:
        text += f" (model '{json.loads(names)[row]}')"
    layout = rows.metadata.get("layout") if hasattr(rows, "metadata") else None
    text += f", dimension {column}"
    if layout:
        text += f" ({LoraLayout.from_json(layout).locate(column)})"
    return text


def column_statistics(
    rows: RowMatrix,
    *,
    std_floor: float | None = None,
    block_rows: int = 1024,
    show_progress: bool | None = None,
    blocks: list[tuple[int, int]] | None = None,
) -> ColumnStatistics:
    """One streaming pass: per-dimension mean and unbiased std (per block ``torch.var_mean``, which
    accumulates in float64 on CPU, merged across blocks by Chan's parallel update in float64).

    ``std_floor``: std values below it are raised to it (dimensions that barely vary would
    otherwise be blown up to unit variance, and a zero std makes standardization undefined).
    None picks ``1e-3 x`` the median nonzero std. Raises ValueError on NaN/Inf in the data,
    naming the model and the LoRA tensor, and when there are fewer than 2 models.

    ``blocks``: the row ranges this process reads (default: all). Under torch.distributed each
    rank passes its own; the per-rank moments ``(n_r, mean_r, M2_r)`` are merged exactly with two
    float64 all_reduces: ``mean = sum_r n_r mean_r / N``, ``M2 = sum_r M2_r + n_r (mean_r - mean)^2``.
    """
    count, dims = rows.shape
    if count < 2:
        raise ValueError(f"vision_kernels.weightspace: a weight space needs at least 2 models, got {count}")
    if std_floor is not None and not std_floor > 0:
        raise ValueError(f"vision_kernels.weightspace: argument 'std_floor' must be > 0, got {std_floor}")
    blocks = _ranges(count, block_rows) if blocks is None else blocks
    seen, mean, m2 = _agree(lambda: _local_moments(rows, blocks, show_progress), "column statistics")
    if distributed.current().world > 1:
        total_mean = distributed.all_reduce_sum(mean * seen) / count
        m2 = distributed.all_reduce_sum(m2 + (mean - total_mean).square() * seen)
        mean = total_mean
    raw_std = (m2 / (count - 1)).sqrt()
    if std_floor is None:
        nonzero = raw_std[raw_std > 0]
        floor = 1e-3 * float(nonzero.median()) if nonzero.numel() else 1.0
    else:
        floor = float(std_floor)
    std = raw_std.clamp(min=floor)
    total_variance = float((m2 / std.square()).sum())
    return ColumnStatistics(mean, std, raw_std, floor, int((raw_std < floor).sum()), total_variance)


def _local_moments(
    rows: RowMatrix, blocks: list[tuple[int, int]], show_progress: bool | None
) -> tuple[int, Tensor, Tensor]:
    """``(n, mean [D], M2 [D])`` (float64) of the rows in ``blocks``; ValueError naming the first NaN/Inf."""
    dims = rows.shape[1]
    mean = torch.zeros(dims, dtype=torch.float64)
    m2 = torch.zeros(dims, dtype=torch.float64)
    seen = 0
    for start, stop in progress(blocks, desc="column statistics", enabled=show_progress):
        block = rows.read(start, stop)
        for sub in range(0, block.shape[0], _STATS_ROWS):
            x = block[sub : sub + _STATS_ROWS]
            n = x.shape[0]
            # One pass per sub-block (Welford, float64 accumulation on CPU); NaN/Inf shows up here.
            block_var, block_mean = torch.var_mean(x if x.dtype in (torch.float32, torch.float64) else x.float(),
                                                   0, correction=0)  # fmt: skip
            if not bool(torch.isfinite(block_mean).all() and torch.isfinite(block_var).all()):
                row, column = (int(i) for i in (~torch.isfinite(x)).nonzero()[0])
                where = _describe_row(rows, start + sub + row, column)
                raise ValueError(f"vision_kernels.weightspace: the weights hold NaN or Inf at {where}")
            block_mean = block_mean.to(torch.float64)  # [D]
            block_m2 = block_var.to(torch.float64) * n  # [D]
            delta = block_mean - mean
            total = seen + n
            mean += delta * (n / total)
            m2 += block_m2 + delta.square() * (seen * n / total)
            seen = total
    return seen, mean, m2


def _agree(work: Any, what: str) -> Any:
    """Run ``work()`` on every rank; if it fails on any rank, fail on all of them (no rank is left
    waiting in a collective): the failing rank raises its own error, the others a RuntimeError."""
    if distributed.current().world == 1:
        return work()
    error: BaseException | None = None
    result = None
    try:
        result = work()
    except Exception as caught:  # noqa: BLE001 - re-raised below, after the ranks agree
        error = caught
    if not distributed.all_ranks_ok(error is None):
        if error is not None:
            raise error
        raise RuntimeError(f"vision_kernels.weightspace: {what} failed on another rank (see its message)")
    return result


class _Standardized:
    """Row blocks of Z = (X - mu) / sigma, standardized on the fly (float32, or float64 when asked)."""

    def __init__(self, rows: RowMatrix, stats: ColumnStatistics, device: torch.device, dtype: torch.dtype) -> None:
        self.rows, self.device, self.dtype = rows, device, dtype
        self.mean = stats.mean.to(device, dtype)
        self.inverse_std = stats.std.reciprocal().to(device, dtype)

    def block(self, start: int, stop: int) -> Tensor:
        x = self.rows.read(start, stop).to(self.device)
        if self.dtype == torch.float64:
            x = x.to(torch.float64)
        return standardize_block(x, self.mean, self.inverse_std)  # [b, D]


def _ranges(count: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(count, s + size)) for s in range(0, count, size)]


def _gram(z: _Standardized, count: int, memory: int, show_progress: bool | None) -> Tensor:
    """G = Z Z^T ([N, N] in the dtype of the blocks) from panels of rows times every earlier block."""
    dims = z.rows.shape[1]
    panel_rows = _block_rows(dims, memory, 0.5)
    inner_rows = max(1, panel_rows // 2)
    gram = torch.empty((count, count), dtype=z.dtype, device=z.device)
    panels = _ranges(count, panel_rows)
    for a0, a1 in progress(panels, desc="Gram matrix", enabled=show_progress):
        panel = z.block(a0, a1)  # [P, D]
        _symmetric_product(panel, gram[a0:a1, a0:a1])
        for b0, b1 in _ranges(a0, inner_rows):
            product = panel @ z.block(b0, b1).T  # [P, b]
            gram[a0:a1, b0:b1] = product
            gram[b0:b1, a0:a1] = product.T
    return gram


def _symmetric_product(rows: Tensor, out: Tensor, leaf: int = 256) -> None:
    """``out = rows @ rows.T`` computing each off-diagonal block once (recursive halving), so a
    diagonal panel costs about half a GEMM."""
    count = rows.shape[0]
    if count <= leaf:
        torch.mm(rows, rows.T, out=out) if out.is_contiguous() else out.copy_(rows @ rows.T)
        return
    half = count // 2
    top, bottom = rows[:half], rows[half:]
    _symmetric_product(top, out[:half, :half], leaf)
    _symmetric_product(bottom, out[half:, half:], leaf)
    cross = bottom @ top.T  # [count - half, half]
    out[half:, :half] = cross
    out[:half, half:] = cross.T


def _apply_streaming(
    z: _Standardized, q: Tensor, blocks: list[tuple[int, int]], show_progress: bool | None, what: str
) -> Tensor:
    """G Q = Z (Z^T Q) with two passes over this rank's ``blocks``; Q: [N, l] -> [N, l].

    ``W = Z^T Q`` ([D, l]) is summed over ranks; each rank fills its rows of ``Z W``, the zero rows
    of the others make the all_reduce an exact gather-free assembly."""
    dims = z.rows.shape[1]
    w = torch.zeros((dims, q.shape[1]), dtype=z.dtype, device=z.device)  # [D, l]
    for a, b in progress(blocks, desc=f"{what}: Z^T Q", enabled=show_progress):
        w.addmm_(z.block(a, b).T, q[a:b].to(z.dtype))
    distributed.all_reduce_sum(w)
    y = torch.zeros_like(q)  # [N, l]
    for a, b in progress(blocks, desc=f"{what}: Z W", enabled=show_progress):
        y[a:b] = z.block(a, b) @ w
    return distributed.all_reduce_sum(y)


def _orthonormal(y: Tensor) -> Tensor:
    return torch.linalg.qr(y).Q


def _flip_signs(u: Tensor) -> Tensor:
    """Per-column sign making the largest-magnitude entry of each column of u positive."""
    index = u.abs().argmax(0)
    signs = torch.sign(u.gather(0, index[None])[0])
    signs[signs == 0] = 1
    return signs


def _basis_from_u(z: _Standardized, u: Tensor, scale: Tensor, block_rows: int, show_progress: bool | None) -> Tensor:
    """V = Z^T (U diag(scale)) by one streaming pass; U: [N, k] -> V: [D, k]."""
    count, dims = z.rows.shape
    weights = (u * scale).to(z.dtype)  # [N, k]
    basis = torch.zeros((dims, u.shape[1]), dtype=z.dtype, device=z.device)
    for a, b in progress(_ranges(count, block_rows), desc="basis: Z^T U / S", enabled=show_progress):
        basis.addmm_(z.block(a, b).T, weights[a:b])
    return basis


def _check_spread(stats: ColumnStatistics, count: int) -> None:
    if not stats.total_variance > 0:
        raise ValueError(
            f"vision_kernels.weightspace: the weights have zero variance: all {count} models have the same "
            "weights in every dimension (a constant matrix), so there is no direction to fit"
        )


def _check_rank(singular: Tensor, n_components: int) -> None:
    """Components with (numerically) zero singular value have no direction: refuse them by name."""
    tolerance = float(singular[0]) * 1e-6 if singular.numel() else 0.0
    rank = int((singular > tolerance).sum())
    if rank < n_components:
        raise ValueError(
            f"vision_kernels.weightspace: the standardized weights span only {rank} dimension(s) (the models "
            f"are linearly dependent, e.g. duplicates), fewer than n_components={n_components}: ask for at most "
            f"{rank} component(s)"
        )


def _metadata_names(rows: RowMatrix) -> tuple[LoraLayout | None, list[str] | None]:
    metadata = getattr(rows, "metadata", {}) or {}
    layout = LoraLayout.from_json(metadata["layout"]) if "layout" in metadata else None
    names = json.loads(metadata["names"]) if "names" in metadata else None
    return layout, names


def _check_components(n_components: int, count: int, dims: int) -> None:
    if count < 2:
        raise ValueError(f"vision_kernels.weightspace: a weight space needs at least 2 models, got {count}")
    limit = min(count - 1, dims)
    if not 1 <= n_components <= limit:
        raise ValueError(
            "vision_kernels.weightspace: argument 'n_components' must be in [1, min(N - 1, D)] = "
            f"[1, {limit}] for {count} models of dimension {dims}, got {n_components}"
        )


def fit_streaming(
    source: Any,
    n_components: int,
    *,
    oversample: int = 10,
    n_iter: int = 4,
    seed: int = 0,
    std_floor: float | None = None,
    memory: int = 2**31,
    gram_memory: int = 2**31,
    basis_dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    layout: LoraLayout | None = None,
    names: list[str] | None = None,
    attributes: dict[str, Tensor] | None = None,
    show_progress: bool | None = None,
) -> WeightSpace:
    """Fit a weight space by randomized PCA, streaming row blocks of the weights (see the module docstring).

    Args:
        source: the ``[N, D]`` weights: a ``.safetensors``/``.npy`` path (e.g. written by
            :meth:`LoraDataset.write_matrix`, whose layout and model names are picked up), a list
            of such shards, a LoraDataset, a collected run (:func:`open_run_rows`), a RowMatrix,
            or a tensor/array in memory.
        n_components: K, at most ``min(N - 1, D)``.
        oversample: extra sketch columns (l = K + oversample).
        n_iter: power iterations (each is one multiplication by G).
        seed: seed of the Gaussian test matrix; the fit is deterministic for a given seed (and
            the same on any number of ranks, up to float32 rounding).
        std_floor: see :func:`column_statistics`.
        memory: bytes of row blocks held at once (panel + inner block for the Gram cache).
        gram_memory: cache G (float32) in memory when ``4 N^2`` bytes fit; 0 forces the two-pass
            operator (always used under torch.distributed with more than one rank).
        basis_dtype: storage dtype of the basis (float32, or float16/bfloat16 to halve it).
        device: where the GEMMs run ("cpu" or a CUDA device); blocks are read on the host.
        layout, names, attributes: override what the source's metadata says.
        show_progress: progress bars (default: the global setting; rank 0 only).

    Memory: one row block (``memory / 4`` bytes as float32) plus ``W = Z^T Q`` (``[D, l]``), the
    basis (``[D, K]``) and ``[N, l]`` sketches and ``[N, K]`` coefficients, plus the ``[N, N]``
    Gram cache only when it fits ``gram_memory``.

    Returns:
        A :class:`WeightSpace` with the training models' coefficients ``U S`` (identical on every rank).
    """
    rows = open_rows(source)
    count, dims = rows.shape
    _check_components(n_components, count, dims)
    if oversample < 0 or n_iter < 0:
        raise ValueError(
            f"vision_kernels.weightspace: 'oversample' and 'n_iter' must be >= 0, got {oversample}, {n_iter}"
        )
    device = torch.device(device)
    ranks = distributed.current()
    block_rows = _block_rows(dims, memory, 0.25)
    blocks = distributed.owned(_ranges(count, block_rows), ranks)  # this rank's row blocks
    stats = column_statistics(rows, std_floor=std_floor, blocks=blocks, show_progress=show_progress)
    _check_spread(stats, count)
    z = _Standardized(rows, stats, device, torch.float32)
    width = min(n_components + oversample, count)
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn((count, width), generator=generator).to(device)  # [N, l] float32, same on every rank
    cached = 4 * count * count <= gram_memory and ranks.world == 1

    if cached:
        gram = _gram(z, count, memory, show_progress)

        def apply(q: Tensor, what: str) -> Tensor:
            return gram @ q

    else:

        def apply(q: Tensor, what: str) -> Tensor:
            return _apply_streaming(z, q, blocks, show_progress, what)

    q = _orthonormal(apply(omega, "range finder"))  # [N, l]
    for iteration in range(n_iter):
        q = _orthonormal(apply(q, f"power iteration {iteration + 1}/{n_iter}"))

    if cached:
        small = (q.T @ (gram @ q)).double()  # [l, l] = Q^T G Q
        values, vectors = torch.linalg.eigh((small + small.T) / 2)
        order = values.argsort(descending=True)[:n_components]
        values, u = values[order].clamp(min=0), q @ vectors[:, order].float()  # [k], [N, k]
        singular = values.sqrt()
        _check_rank(singular, n_components)
        u = u * _flip_signs(u)
        inverse = (1 / singular).float()
        basis = _basis_from_u(z, u, inverse, block_rows, show_progress)  # [D, k]
        coefficients = (gram @ u) * inverse  # [N, k] exact Z V = G U S^-1
    else:
        w = torch.zeros((dims, width), dtype=torch.float32, device=device)  # [D, l] = Z^T Q
        for a, b in progress(blocks, desc="final pass: Z^T Q", enabled=show_progress):
            w.addmm_(z.block(a, b).T, q[a:b])
        distributed.all_reduce_sum(w)
        small = (w.T @ w).to(torch.float64)  # [l, l] = Q^T G Q
        values, vectors = torch.linalg.eigh((small + small.T) / 2)
        order = values.argsort(descending=True)[:n_components]
        values, vectors = values[order].clamp(min=0), vectors[:, order]
        singular = values.sqrt()
        _check_rank(singular, n_components)
        vectors = vectors.float()
        vectors = vectors * _flip_signs(q @ vectors)
        basis = w @ (vectors * (1 / singular).float())  # [D, k] = Z^T Q W S^-1
        del w
        coefficients = _coefficients_streaming(z, basis, blocks, show_progress)  # [N, k]

    meta_layout, meta_names = _metadata_names(rows)
    return WeightSpace(
        mean=stats.mean.float(),
        std=stats.std.float(),
        basis=basis.to("cpu", basis_dtype),
        singular_values=singular.cpu(),
        n_models=count,
        total_variance=stats.total_variance,
        layout=layout or meta_layout,
        coefficients=coefficients.float().cpu(),
        names=names or meta_names,
        attributes=attributes if attributes is not None else getattr(rows, "attributes", None),
        info={
            "method": "streaming randomized PCA" + (" (Gram cache)" if cached else " (two-pass operator)"),
            "n_iter": n_iter,
            "oversample": oversample,
            "seed": seed,
            "std_floor": stats.floor,
            "floored_dimensions": stats.floored,
            "ranks": ranks.world,
        },
    )


def _coefficients_streaming(
    z: _Standardized, basis: Tensor, blocks: list[tuple[int, int]], show_progress: bool | None
) -> Tensor:
    """``Z V`` ([N, k] float64): each rank fills its rows, summed over ranks (zeros elsewhere)."""
    count = z.rows.shape[0]
    out = torch.zeros((count, basis.shape[1]), dtype=torch.float64, device=basis.device)
    for a, b in progress(blocks, desc="coefficients: Z V", enabled=show_progress):
        out[a:b] = (z.block(a, b) @ basis).to(torch.float64)
    return distributed.all_reduce_sum(out)


def fit_exact(
    source: Any,
    n_components: int,
    *,
    std_floor: float | None = None,
    memory: int = 2**30,
    basis_dtype: torch.dtype = torch.float32,
    layout: LoraLayout | None = None,
    names: list[str] | None = None,
    show_progress: bool | None = None,
    max_models: int = 20000,
) -> WeightSpace:
    """Exact PCA through the float64 Gram matrix ``G = Z Z^T`` and its full eigendecomposition.

    ``V = Z^T U S^-1`` for the K largest eigenpairs ``G = U S^2 U^T``. Cost ``N^2 D`` flops in
    float64 plus an ``O(N^3)`` eigendecomposition: meant for datasets of at most ``max_models``
    models, and as the ground truth the streaming fit is checked against.
    """
    rows = open_rows(source)
    count, dims = rows.shape
    _check_components(n_components, count, dims)
    if count > max_models:
        raise ValueError(
            f"vision_kernels.weightspace.fit_exact: {count} models exceed max_models={max_models}; use fit_streaming"
        )
    block_rows = _block_rows(dims, memory, 0.125)
    stats = column_statistics(rows, std_floor=std_floor, block_rows=block_rows, show_progress=show_progress)
    _check_spread(stats, count)
    z = _Standardized(rows, stats, torch.device("cpu"), torch.float64)
    gram = _gram(z, count, memory // 2, show_progress)
    values, vectors = torch.linalg.eigh(gram)
    order = values.argsort(descending=True)[:n_components]
    values, u = values[order].clamp(min=0), vectors[:, order]
    u = u * _flip_signs(u)
    singular = values.sqrt()
    _check_rank(singular, n_components)
    basis = _basis_from_u(z, u, 1 / singular, block_rows, show_progress)
    meta_layout, meta_names = _metadata_names(rows)
    return WeightSpace(
        mean=stats.mean.float(),
        std=stats.std.float(),
        basis=basis.to(basis_dtype),
        singular_values=singular,
        n_models=count,
        total_variance=stats.total_variance,
        layout=layout or meta_layout,
        coefficients=(u * singular).float(),
        names=names or meta_names,
        attributes=getattr(rows, "attributes", None),
        info={"method": "exact Gram eigendecomposition", "std_floor": stats.floor, "floored_dimensions": stats.floored},
    )


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the column spans of ``a`` [D, p] and ``b`` [D, q]."""
    qa = torch.linalg.qr(a.double()).Q
    qb = torch.linalg.qr(b.double()).Q
    cosines = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)  # descending
    return torch.arccos(cosines)
