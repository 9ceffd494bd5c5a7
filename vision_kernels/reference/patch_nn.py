"""Plain-PyTorch ground truth for vision_kernels.ops.patch_nn (space-time patch nearest neighbours).

Conventions shared with the kernels (csrc/patch_nn/patch.h):

* inputs are ``[T, H, W, C]`` arrays (an image is ``T = 1``); a patch of size ``(pt, ph, pw)`` at
  grid position ``(t, y, x)`` holds ``x[t + dt, y + dy, x + dx, c]`` in the order ``(dt, dy, dx, c)``,
  ``n = pt * ph * pw * C`` values; positions form the grid ``[T - pt + 1, H - ph + 1, W - pw + 1]``,
  numbered row-major (the *flat index*);
* ``ssd(q, k) = sum_e (q_e - k_e)^2`` with every value converted to float64 and the sum taken left to
  right in patch order, each operation rounded to float64 (this is what makes "exact" well defined);
* ``D = ssd / n`` (the mean squared difference, the reported distance);
* ``alpha=None``: ``argmin_k ssd(q, k)``; ``alpha > 0``: ``m(k) = min_q ssd(q, k)``,
  ``den(k) = alpha * n + m(k)``, ``w(k) = 1 / den(k)``, ``S(q, k) = ssd(q, k) * w(k)`` (each step rounded
  to float64; mathematically ``D / (alpha + min_q D)``), ``argmin_k S``;
* ties go to the lowest flat key index (``torch.argmin`` returns the first minimum).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "patch_grid",
    "unfold_patches",
    "ssd_matrix",
    "key_minima",
    "patch_nn",
    "patch_nn_chunked",
    "patch_vote",
    "patch_match",
]


def _triple(patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(patch_size, int):
        return (1, patch_size, patch_size)
    size = tuple(int(p) for p in patch_size)
    return (1, *size) if len(size) == 2 else size  # type: ignore[return-value]


def patch_grid(shape: Sequence[int], patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """Grid of patch positions ``(T - pt + 1, H - ph + 1, W - pw + 1)`` of a ``[T, H, W, C]`` shape."""
    pt, ph, pw = _triple(patch_size)
    return (shape[0] - pt + 1, shape[1] - ph + 1, shape[2] - pw + 1)


def unfold_patches(x: Tensor, patch_size: int | Sequence[int]) -> Tensor:
    """All patches of ``x [T, H, W, C]`` as ``[T', H', W', n]`` rows in patch order ``(dt, dy, dx, c)``."""
    pt, ph, pw = _triple(patch_size)
    windows = x.unfold(0, pt, 1).unfold(1, ph, 1).unfold(2, pw, 1)  # [T', H', W', C, pt, ph, pw]
    return windows.permute(0, 1, 2, 4, 5, 6, 3).reshape(*windows.shape[:3], -1)


def ssd_matrix(q: Tensor, k: Tensor) -> Tensor:
    """``ssd[i, j] = sum_e (q[i, e] - k[j, e])^2`` in float64, summed left to right over e."""
    q64, k64 = q.double(), k.double()  # [Nq, n], [Nk, n]
    total = torch.zeros(q.shape[0], k.shape[0], dtype=torch.float64, device=q.device)
    for e in range(q.shape[1]):
        d = q64[:, e, None] - k64[None, :, e]  # [Nq, Nk]
        total = total + d * d
    return total


def _flat_patches(x: Tensor, patch_size: int | Sequence[int], mask: Tensor | None) -> tuple[Tensor, Tensor]:
    patches = unfold_patches(x, patch_size)  # [T', H', W', n]
    flat = patches.reshape(-1, patches.shape[-1])
    valid = torch.ones(flat.shape[0], dtype=torch.bool) if mask is None else mask.reshape(-1).cpu()
    return flat, valid


def _ssd_chunks(q: Tensor, k: Tensor, chunk: int):
    for start in range(0, q.shape[0], chunk):
        yield start, ssd_matrix(q[start : start + chunk], k)  # [chunk, Nk]


def key_minima(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int],
    *,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    chunk: int = 256,
) -> Tensor:
    """``m(k) = min over valid queries of ssd(q, k)`` for every key position, ``[Tk', Hk', Wk']`` float64."""
    q, q_valid = _flat_patches(queries, patch_size, query_mask)
    k, _ = _flat_patches(keys, patch_size, key_mask)
    minima = torch.full((k.shape[0],), float("inf"), dtype=torch.float64)
    q = q[q_valid]
    for _, ssd in _ssd_chunks(q, k, chunk):
        minima = torch.minimum(minima, ssd.min(dim=0).values)
    return minima.view(patch_grid(keys.shape, patch_size))


def patch_nn(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int],
    *,
    alpha: float | None = None,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    chunk: int = 256,
) -> tuple[Tensor, Tensor]:
    """Brute-force patch nearest neighbours in the exact arithmetic (see the module docstring).

    Returns ``(index, distance)`` over the query grid: int64 flat key indices (-1 for masked queries)
    and ``D = ssd / n`` as float32 (float64 for float64 inputs; +inf for masked queries).
    """
    q, q_valid = _flat_patches(queries, patch_size, query_mask)
    k, k_valid = _flat_patches(keys, patch_size, key_mask)
    n = q.shape[1]
    excluded = torch.where(k_valid, 0.0, float("inf")).double()  # [Nk]
    den = None
    if alpha is not None:
        minima = key_minima(queries, keys, patch_size, query_mask=query_mask, key_mask=key_mask, chunk=chunk)
        den = float(alpha) * n + minima.reshape(-1)  # [Nk], alpha * n rounded first, then + m(k)
        weight = 1.0 / den  # [Nk] w(k)
    index = torch.full((q.shape[0],), -1, dtype=torch.long)
    distance = torch.full((q.shape[0],), float("inf"), dtype=torch.float64)
    rows = torch.nonzero(q_valid).reshape(-1)
    for start, ssd in _ssd_chunks(q[rows], k, chunk):
        score = ssd if den is None else ssd * weight[None, :]
        best = torch.argmin(score + excluded[None, :], dim=1)  # first minimum: lowest key index
        chosen = rows[start : start + chunk]
        index[chosen] = best
        distance[chosen] = ssd.gather(1, best[:, None])[:, 0] / n
    grid = patch_grid(queries.shape, patch_size)
    out_dtype = torch.float64 if queries.dtype == torch.float64 else torch.float32
    return index.view(grid), distance.to(out_dtype).view(grid)


def patch_nn_chunked(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int],
    *,
    alpha: float | None = None,
    chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """What a researcher writes in PyTorch: unfolded patches, GEMM-form distances in float32, chunks
    of ``chunk`` rows, and two passes for ``alpha`` (column minima, then normalized argmin).

    Not the ground truth (float32 rounding of ``|q|^2 + |k|^2 - 2 q.k`` can reorder near-ties); it is
    the speed baseline of the benchmarks. Returns ``(index, distance)`` like :func:`patch_nn`.
    """
    q = unfold_patches(queries, patch_size).reshape(-1, queries.shape[-1] * _volume(patch_size)).float()
    k = unfold_patches(keys, patch_size).reshape(-1, q.shape[1]).float()
    n = q.shape[1]
    q_norm, k_norm = (q * q).sum(1), (k * k).sum(1)  # [Nq], [Nk]

    def distances(rows: slice, cols: slice) -> Tensor:
        return (q_norm[rows, None] + k_norm[None, cols] - 2.0 * (q[rows] @ k[cols].T)).clamp_(min=0) / n

    normalizer = None
    if alpha is not None:
        minima = torch.cat([distances(slice(None), slice(s, s + chunk)).min(0).values for s in range(0, len(k), chunk)])
        normalizer = alpha + minima  # [Nk]
    index = torch.empty(len(q), dtype=torch.long)
    distance = torch.empty(len(q))
    for s in range(0, len(q), chunk):
        d = distances(slice(s, s + chunk), slice(None))  # [chunk, Nk]
        best = (d if normalizer is None else d / normalizer).argmin(1)
        index[s : s + chunk] = best
        distance[s : s + chunk] = d.gather(1, best[:, None])[:, 0]
    grid = patch_grid(queries.shape, patch_size)
    return index.view(grid), distance.view(grid)


def _volume(patch_size: int | Sequence[int]) -> int:
    pt, ph, pw = _triple(patch_size)
    return pt * ph * pw


# ---------------------------------------------------------------- voting


def _offset_weights(patch: tuple[int, int, int], sigma: tuple[float, float] | None) -> Tensor:
    """Gaussian weight of each patch offset ``[pt, ph, pw]`` (all ones without ``sigma``)."""
    pt, ph, pw = patch
    if sigma is None:
        return torch.ones(pt, ph, pw, dtype=torch.float64)
    sigma_t, sigma_s = sigma
    at = torch.arange(pt, dtype=torch.float64) - 0.5 * (pt - 1)
    ay = torch.arange(ph, dtype=torch.float64) - 0.5 * (ph - 1)
    ax = torch.arange(pw, dtype=torch.float64) - 0.5 * (pw - 1)
    exponent = -(at**2)[:, None, None] / (2 * sigma_t**2) - ((ay**2)[None, :, None] + (ax**2)[None, None, :]) / (
        2 * sigma_s**2
    )
    return torch.exp(exponent)


def patch_vote(
    values: Tensor,
    index: Tensor,
    patch_size: int | Sequence[int],
    *,
    reduction: str = "mean",
    sigma: tuple[float, float] | None = None,
    weights: Tensor | None = None,
    fill: float = 0.0,
) -> Tensor:
    """Fold the value patches chosen by ``index`` back into an array (in float64, returned in values' dtype).

    ``out[t, y, x, c]`` reduces, over every query position ``p = (t, y, x) - (dt, dy, dx)`` of the
    grid ``index [T', H', W']`` with ``index[p] >= 0``, the value ``values[key + (dt, dy, dx), c]`` of
    the chosen value patch: ``"mean"`` (weighted by ``weights[p]``), ``"gaussian"`` (also weighted by a
    Gaussian of the offset from the patch centre with ``sigma = (sigma_t, sigma_s)``) or ``"median"``
    (lower median). Pixels no patch covers get ``fill``. Output ``[T' + pt - 1, H' + ph - 1, W' + pw - 1, C]``.
    """
    pt, ph, pw = _triple(patch_size)
    patches = unfold_patches(values.double(), (pt, ph, pw))
    patches = patches.reshape(-1, pt, ph, pw, values.shape[-1])  # [Nk, pt, ph, pw, C]
    grid = index.shape
    valid = index >= 0
    chosen = patches[index.clamp(min=0).reshape(-1)].reshape(*grid, pt, ph, pw, -1)  # [T', H', W', pt, ph, pw, C]
    shape = (grid[0] + pt - 1, grid[1] + ph - 1, grid[2] + pw - 1, values.shape[-1])
    if reduction == "median":
        stack = torch.full((pt * ph * pw, *shape), float("nan"), dtype=torch.float64)
        for o, (dt, dy, dx) in enumerate((a, b, c) for a in range(pt) for b in range(ph) for c in range(pw)):
            contribution = torch.where(valid[..., None], chosen[:, :, :, dt, dy, dx, :], float("nan"))
            stack[o, dt : dt + grid[0], dy : dy + grid[1], dx : dx + grid[2]] = contribution
        out = torch.nanmedian(stack, dim=0).values  # lower median, NaN where nothing was voted
        return torch.nan_to_num(out, nan=fill).to(values.dtype)
    offset = _offset_weights((pt, ph, pw), sigma if reduction == "gaussian" else None)
    w = (torch.ones(grid, dtype=torch.float64) if weights is None else weights.double()) * valid
    sums = torch.zeros(shape, dtype=torch.float64)
    total = torch.zeros(shape[:3], dtype=torch.float64)
    for dt in range(pt):
        for dy in range(ph):
            for dx in range(pw):
                wo = w * offset[dt, dy, dx]  # [T', H', W']
                region = (slice(dt, dt + grid[0]), slice(dy, dy + grid[1]), slice(dx, dx + grid[2]))
                sums[region] += chosen[:, :, :, dt, dy, dx, :] * wo[..., None]
                total[region] += wo
    out = torch.where(total[..., None] > 0, sums / total.clamp(min=1e-300)[..., None], fill)
    return out.to(values.dtype)


# ---------------------------------------------------------------- PatchMatch

_MIX1 = 0xBF58476D1CE4E5B9 - 2**64  # the SplitMix64 constants as int64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift_right(z: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 values seen as uint64."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: Tensor) -> Tensor:
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def _random_bits(seed: int, stream: int, a: Tensor, b: int) -> Tensor:
    z = _mix64(torch.full_like(a, seed ^ stream))
    return _mix64(_mix64(z ^ a) ^ b)


def _uniform_in(bits: Tensor, lo: Tensor | int, hi: Tensor | int) -> Tensor:
    return lo + _shift_right(bits, 33) % (hi - lo + 1)


class _MatchReference:
    """The PatchMatch of csrc/patch_nn/patch.h ("PatchMatch"), vectorized over queries."""

    def __init__(self, queries, keys, patch, query_mask, key_mask, key_den, seed) -> None:
        self.q = unfold_patches(queries, patch).reshape(-1, queries.shape[-1] * patch[0] * patch[1] * patch[2])
        self.k = unfold_patches(keys, patch).reshape(-1, self.q.shape[1])
        self.qgrid = patch_grid(queries.shape, patch)
        self.kgrid = patch_grid(keys.shape, patch)
        nq = self.q.shape[0]
        self.qmask = torch.ones(nq, dtype=torch.bool) if query_mask is None else query_mask.reshape(-1)
        self.kmask = torch.ones(self.k.shape[0], dtype=torch.bool) if key_mask is None else key_mask.reshape(-1)
        self.den: Tensor | None = None if key_den is None else key_den.reshape(-1).double()
        self.weight: Tensor | None = None if self.den is None else 1.0 / self.den
        self.seed = seed
        self.rows = torch.arange(nq)
        self.key = torch.full((nq,), -1, dtype=torch.long)
        self.score = torch.full((nq,), float("inf"), dtype=torch.float64)
        self.ssd = torch.full((nq,), float("inf"), dtype=torch.float64)

    def consider(self, candidate: Tensor, active: Tensor) -> None:
        ok = active & (candidate >= 0) & (candidate < self.k.shape[0])
        ok[ok.clone()] &= self.kmask[candidate[ok]]
        rows = self.rows[ok]
        if rows.numel() == 0:
            return
        cand = candidate[ok]
        ssd = ssd_matrix_rows(self.q[rows], self.k[cand])
        score = ssd if self.weight is None else ssd * self.weight[cand]
        win = (score < self.score[rows]) | ((score == self.score[rows]) & (cand < self.key[rows]))
        rows, cand, ssd, score = rows[win], cand[win], ssd[win], score[win]
        self.key[rows], self.ssd[rows], self.score[rows] = cand, ssd, score

    def init(self, guess: Tensor | None) -> None:
        nk = self.k.shape[0]
        if guess is not None:
            self.consider(guess.reshape(-1).clone(), self.qmask.clone())
        for trial in range(4):
            self.consider(_uniform_in(_random_bits(self.seed, 0, self.rows, trial), 0, nk - 1), self.qmask.clone())
        start = _uniform_in(_random_bits(self.seed, 0, self.rows, 4), 0, nk - 1)
        valid_keys = torch.nonzero(self.kmask).reshape(-1)
        position = torch.searchsorted(valid_keys, start) % len(valid_keys)
        self.consider(valid_keys[position], self.qmask & (self.key < 0))

    def step(self, iteration: int) -> None:
        qt, qh, qw = self.qgrid
        kt, kh, kw = self.kgrid
        qpos = (self.rows // (qh * qw), (self.rows // qw) % qh, self.rows % qw)
        qext, kext = (qt, qh, qw), (kt, kh, kw)
        qstride, kstride = (qh * qw, qw, 1), (kh * kw, kw, 1)
        old_key = self.key.clone()
        jump = 16 >> (iteration % 5)
        for axis in range(3):
            for distance in (jump, 1) if jump > 1 else (1,):
                for sign in (-1, 1):
                    n = qpos[axis] + sign * distance
                    inside = (n >= 0) & (n < qext[axis]) & self.qmask
                    neighbour = torch.where(inside, self.rows + sign * distance * qstride[axis], 0)
                    nk = old_key[neighbour]
                    ok = inside & (nk >= 0) & self.qmask[neighbour]
                    kpos = (nk // kstride[axis]) % kext[axis] - sign * distance
                    ok &= (kpos >= 0) & (kpos < kext[axis])
                    self.consider(nk - sign * distance * kstride[axis], ok)
        radius, trial = max(kext), 0
        while radius >= 1:
            active = self.qmask & (self.key >= 0)
            candidate = torch.zeros_like(self.key)
            for axis in range(3):
                centre = (self.key.clamp(min=0) // kstride[axis]) % kext[axis]
                lo, hi = (centre - radius).clamp(min=0), (centre + radius).clamp(max=kext[axis] - 1)
                draw = _uniform_in(_random_bits(self.seed, iteration + 1, self.rows, 3 * trial + axis), lo, hi)
                candidate += draw * kstride[axis]
            self.consider(candidate, active)
            radius //= 2
            trial += 1


def ssd_matrix_rows(q: Tensor, k: Tensor) -> Tensor:
    """``ssd[i] = sum_e (q[i, e] - k[i, e])^2`` row by row, in the exact arithmetic."""
    q64, k64 = q.double(), k.double()
    total = torch.zeros(q.shape[0], dtype=torch.float64)
    for e in range(q.shape[1]):
        d = q64[:, e] - k64[:, e]
        total = total + d * d
    return total


def patch_match(
    queries: Tensor,
    keys: Tensor,
    patch_size: int | Sequence[int],
    *,
    iterations: int = 5,
    seed: int = 0,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
    key_den: Tensor | None = None,
    init: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """PatchMatch exactly as the kernels run it: ``(index, ssd)`` over the query grid.

    Initial guesses (``init``, 4 random keys, a scan to the first valid key when none is valid),
    then ``iterations`` synchronous steps of propagation (neighbours 1 and 16, 8, 4, 2, 1, 16, ... away
    along t, y and x) and random search (radii halving from the key grid's extent), comparing candidates
    by score (``ssd`` or ``ssd * (1 / key_den)``) then key index. Random numbers come from the counter-based
    generator of the kernels. Masked queries get index -1 and ssd +inf.
    """
    patch = _triple(patch_size)
    state = _MatchReference(queries, keys, patch, query_mask, key_mask, key_den, seed)
    state.init(init)
    for iteration in range(iterations):
        state.step(iteration)
    grid = patch_grid(queries.shape, patch)
    return state.key.view(grid), state.ssd.view(grid)
