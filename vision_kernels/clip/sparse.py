"""Sparse text decompositions of directions: batched orthogonal matching pursuit (torch, CPU and GPU).

Orthogonal matching pursuit approximates a signal ``y [E]`` by ``k`` atoms of a dictionary ``D [M, E]``
(rows are atoms): starting from the residual ``r = y``, it repeatedly adds the atom most correlated with
the residual, ``argmax_j |D_j . r|``, to the support ``S`` and sets ``r = y - D_S^T gamma`` with
``gamma = argmin |y - D_S^T gamma|`` (least squares on the support).

:func:`orthogonal_matching_pursuit` runs it for many signals at once. Each step is one matrix product of
the active residuals ``[P, E]`` with the dictionary ``[E, M]`` (the only step that touches all M atoms),
then per signal an incremental QR update of the support: the new atom is orthogonalized against the
support's orthonormal basis ``Q`` (classical Gram-Schmidt, twice), ``R`` gains one column, and the
residual is ``y - Q (Q^T y)``. The coefficients solve ``R gamma = Q^T y`` at the end. There is no Python
loop over signals or atoms: the loop is over the ``k`` steps, each batched over all signals.

Batch-OMP (Rubinstein, Zibulevsky and Elad, 2008). ``R`` is the progressively updated Cholesky factor of the
support's Gram matrix (``G_SS = D_S D_S^T = R^T R``), so the correlations of the residual with every atom are
also ``D r = alpha0 - G_{:,S} gamma`` with ``alpha0 = D y`` (one product at the start) and ``gamma`` the current
least-squares coefficients (``R gamma = Q^T y``): a step then costs ``O(M k)`` per signal instead of ``O(M E)``,
given the Gram matrix's columns ``G_{:,j} = D d_j`` of the atoms in the supports. A :class:`DictionaryGram`
computes those columns on demand (one product for all the new atoms of a step) and keeps them for later steps,
calls and layers, within a memory budget; each step takes whichever of the two forms costs fewer operations
(the Gram form while the union of the batch's supports is small against ``E`` and its columns are cached, e.g.
one signal at a time, or many signals sharing atoms).

It makes the same choices as scikit-learn's ``OrthogonalMatchingPursuit(fit_intercept=False)`` (same
support in the same order, coefficients equal up to rounding): atoms are compared by raw correlation
(normalize the dictionary's rows yourself, as OMP assumes), and a signal stops early, as in scikit-learn,
when the best atom is already in its support or its correlation with the signal is below machine
epsilon, when the new atom is linearly dependent on the support (squared distance to the support's span
below machine epsilon), or, with ``tol``, when the squared residual norm falls to ``tol``.

:func:`sparse_text_decomposition` is the paper's use (Gandelsman et al., 2024, Sec. 5): each neuron's
principal direction written as a sparse combination of text embeddings, the dictionary centred by its
mean text and with unit rows. (The original code scales the dictionary per embedding dimension instead
of per text, which OMP's atom comparison does not expect; we use unit texts.)
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _progress

__all__ = [
    "DictionaryGram",
    "SparseCode",
    "TextDecomposition",
    "clear_gram_cache",
    "orthogonal_matching_pursuit",
    "sparse_text_decomposition",
]

FUNCTION = "vision_kernels.clip.orthogonal_matching_pursuit"


@dataclass
class SparseCode:
    """The result of :func:`orthogonal_matching_pursuit` for ``P`` signals.

    Attributes:
        indices: ``[P, k]`` atom indices in selection order; ``-1`` past a signal's :attr:`counts`.
        coefficients: ``[P, k]`` least-squares coefficients of those atoms (0 past :attr:`counts`).
        counts: ``[P]`` atoms selected per signal (fewer than ``k`` when a signal stopped early).
        residual_norms: ``[P]`` ``|y - D_S^T gamma|`` per signal.
        num_atoms: size ``M`` of the dictionary.
    """

    indices: Tensor
    coefficients: Tensor
    counts: Tensor
    residual_norms: Tensor
    num_atoms: int

    def dense(self) -> Tensor:
        """``[P, M]`` coefficients over the whole dictionary (scikit-learn's ``coef_`` layout)."""
        out = self.coefficients.new_zeros((self.indices.shape[0], self.num_atoms))
        valid = self.indices >= 0
        rows = torch.arange(self.indices.shape[0], device=self.indices.device)[:, None].expand_as(self.indices)
        out[rows[valid], self.indices[valid]] = self.coefficients[valid]
        return out

    def reconstruct(self, dictionary: Tensor) -> Tensor:
        """``[P, E]`` the sparse approximations ``D_S^T gamma``."""
        atoms = dictionary.to(self.coefficients.dtype)[self.indices.clamp_min(0)]  # [P, k, E]
        return torch.einsum("pk,pke->pe", self.coefficients, atoms)


class DictionaryGram:
    """Cached columns of a dictionary's Gram matrix ``G = D D^T`` (``[M, M]``) for Batch-OMP.

    Build one per dictionary and pass it to every :func:`orthogonal_matching_pursuit` call (``gram=``), e.g. for
    the neurons of every layer against one text bank: the columns computed for one call serve the next ones.
    Without it, calls share an automatic cache of the last dictionary seen (same tensor object, unmodified;
    budget :data:`AUTO_CACHE_BYTES`, freed by :func:`clear_gram_cache`).

    Memory is bounded by ``max_bytes`` (default 1 GiB): at most ``max_bytes // (M * itemsize)`` columns (8,947
    of 30,000 in float32), allocated as needed; when full, the least recently used columns that the current
    step does not need are replaced. :meth:`precompute` fills the whole matrix with one product when it fits
    (``M^2`` values: 3.6 GB for 30,000 float32 atoms), worth it when many signals are decomposed. The cache also
    keeps its own copy of the dictionary (``M x E`` values, not counted in ``max_bytes``).

    The cache belongs to one dictionary: a call with a dictionary of another shape, dtype or device, or with
    other values (checked once per new tensor object, or after an in-place change), raises ValueError.
    """

    def __init__(self, dictionary: Tensor, *, dtype: torch.dtype | None = None, max_bytes: int = 2**30) -> None:
        function = "vision_kernels.clip.DictionaryGram"
        if not isinstance(dictionary, Tensor) or not dictionary.is_floating_point() or dictionary.dim() != 2:
            raise TypeError(f"{function}: argument 'dictionary' must be a floating [M, E] torch.Tensor, got "
                            f"{getattr(dictionary, 'shape', type(dictionary).__name__)}")  # fmt: skip
        if dictionary.shape[0] == 0:
            raise ValueError(f"{function}: argument 'dictionary' must have at least one atom, got shape "
                             f"{list(dictionary.shape)}")  # fmt: skip
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"{function}: argument 'max_bytes' must be an int >= 0, got {max_bytes!r}")
        if dtype is None:
            dtype = torch.float64 if dictionary.dtype == torch.float64 else torch.float32
        _check_finite(dictionary, "dictionary")  # once per dictionary: calls with this cache skip the check
        self.atoms = dictionary.detach().to(dtype, copy=True)  # [M, E] own copy: changes to the input are detected
        atoms = self.atoms.shape[0]
        self.capacity = min(atoms, max_bytes // (atoms * self.atoms.element_size()))  # columns at most
        self.storage = self.atoms.new_empty((0, atoms))  # [C, M]: row c is the column G[:, owner[c]]
        self.slot = torch.full((atoms,), -1, dtype=torch.long, device=self.atoms.device)  # [M] -> row or -1
        self.owner = torch.empty(0, dtype=torch.long, device=self.atoms.device)  # [C] atom of each row
        self.last_used = torch.empty(0, dtype=torch.long, device=self.atoms.device)  # [C] step counter
        self.computed = 0  # columns computed so far (for statistics)
        self._tick = 0
        self._source = (weakref.ref(dictionary), dictionary._version)

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    def precompute(self) -> DictionaryGram:
        """Compute every column now (one ``[M, E] x [E, M]`` product); ValueError if ``max_bytes`` is too small."""
        atoms = self.atoms.shape[0]
        if self.capacity < atoms:
            raise ValueError(
                f"vision_kernels.clip.DictionaryGram.precompute: the whole Gram matrix ({atoms} columns) exceeds "
                f"max_bytes ({self.capacity} columns fit)"
            )
        self.storage = self.atoms @ self.atoms.T  # [M, M]
        self.slot = torch.arange(atoms, device=self.atoms.device)
        self.owner = self.slot.clone()
        self.last_used = torch.zeros(atoms, dtype=torch.long, device=self.atoms.device)
        self.computed += atoms
        return self

    def belongs_to(self, dictionary: Tensor, dtype: torch.dtype) -> bool:
        """Whether this cache is for ``dictionary`` computed in ``dtype`` (a full comparison only for a new
        tensor object or after an in-place change of it)."""
        if dtype != self.atoms.dtype or dictionary.shape != self.atoms.shape or dictionary.device != self.atoms.device:
            return False
        source, version = self._source
        if source() is dictionary and dictionary._version == version:
            return True
        if not torch.equal(dictionary.detach().to(dtype), self.atoms):
            _check_finite(dictionary, "dictionary")
            return False
        self._source = (weakref.ref(dictionary), dictionary._version)
        return True

    def missing(self, atoms: Tensor) -> int:
        """How many of the (unique) ``atoms`` have no cached column."""
        return int((self.slot[atoms] < 0).sum())

    def rows(self, atoms: Tensor) -> Tensor:
        """``[U, M]`` the columns ``G[:, atoms]`` (as rows) of ``U <= capacity`` unique atoms, computing the
        missing ones in one product."""
        self._tick += 1
        slots = self.slot[atoms]
        absent = slots < 0
        if bool(absent.any()):
            new = atoms[absent]
            rows = self._free_rows(new.numel(), atoms)
            self.storage[rows] = self.atoms[new] @ self.atoms.T  # [n, M]
            stale = self.owner[rows]
            self.slot[stale[stale >= 0]] = -1
            self.owner[rows] = new
            self.slot[new] = rows
            self.computed += new.numel()
            slots = self.slot[atoms]
        self.last_used[slots] = self._tick
        return self.storage.index_select(0, slots)

    def _free_rows(self, count: int, needed: Tensor) -> Tensor:
        """Rows for ``count`` new columns: unused rows (growing the storage), else the least recently used rows
        whose atoms are not ``needed``."""
        size = self.storage.shape[0]
        unused = torch.nonzero(self.owner < 0).flatten()
        if unused.numel() < count and size < self.capacity:
            grown = min(self.capacity, max(2 * size, size + count - unused.numel(), 64))
            storage = self.storage.new_empty((grown, self.atoms.shape[0]))
            storage[:size] = self.storage
            self.storage = storage
            extra = torch.full((grown - size,), -1, dtype=torch.long, device=self.owner.device)
            self.owner = torch.cat([self.owner, extra])
            self.last_used = torch.cat([self.last_used, torch.zeros_like(extra)])
            unused = torch.nonzero(self.owner < 0).flatten()
        if unused.numel() >= count:
            return unused[:count]
        age = self.last_used.clone()
        age[self.slot[needed][self.slot[needed] >= 0]] = torch.iinfo(torch.long).max  # never evict what is needed
        age[unused] = -1
        return torch.topk(age, count, largest=False).indices


AUTO_CACHE_BYTES = 256 * 2**20
"""Budget of the automatic Gram cache (the last dictionary used without an explicit :class:`DictionaryGram`)."""

_auto_gram: DictionaryGram | None = None


def clear_gram_cache() -> None:
    """Free the automatic Gram cache of :func:`orthogonal_matching_pursuit` (and the dictionary it holds)."""
    global _auto_gram
    _auto_gram = None


def _gram_for(dictionary: Tensor, dtype: torch.dtype, gram: DictionaryGram | bool | None) -> DictionaryGram | None:
    global _auto_gram
    if gram is False:
        _check_finite(dictionary, "dictionary")
        return None
    if isinstance(gram, DictionaryGram):
        if not gram.belongs_to(dictionary, dtype):
            raise ValueError(
                f"{FUNCTION}: argument 'gram' was built for another dictionary (shape {list(gram.atoms.shape)}, "
                f"{gram.atoms.dtype}, {gram.atoms.device}, or other values) than 'dictionary' "
                f"({list(dictionary.shape)}, computed in {dtype}, {dictionary.device})"
            )
        return gram
    if gram is not None and gram is not True:
        raise TypeError(f"{FUNCTION}: argument 'gram' must be a DictionaryGram, True, False or None, got "
                        f"{type(gram).__name__}")  # fmt: skip
    cached = _auto_gram
    source = cached._source[0]() if cached is not None else None
    if cached is None or source is not dictionary or not cached.belongs_to(dictionary, dtype):
        cached = _auto_gram = DictionaryGram(dictionary, dtype=dtype, max_bytes=AUTO_CACHE_BYTES)
    return cached


def _gram_union(indices: Tensor, steps: int, gram: DictionaryGram, direct_cost: float) -> tuple | None:
    """The union of the supports and where each entry goes in it, if the Gram form of the step is cheaper.

    Operation counts per step: the direct form is one ``[P, E] x [E, M]`` product (``2 P E M``); the Gram form
    computes the missing columns (``2 E M`` each), copies the ``U`` columns of the union and multiplies
    ``[P, U] x [U, M]`` (``2 P U M``). New columns are kept for later, so the Gram form may cost up to 25% more
    when it computes some.
    """
    support = indices[:, :steps]
    valid = support >= 0
    union, inverse = torch.unique(support[valid], return_inverse=True)
    if union.numel() == 0 or union.numel() > gram.capacity:
        return None
    count, atoms = indices.shape[0], gram.atoms.shape[0]
    missing = gram.missing(union)
    cost = 2.0 * atoms * (missing * gram.atoms.shape[1] + count * union.numel() + union.numel())
    if cost > direct_cost * (1.25 if missing else 1.0):
        return None
    return union, inverse, valid


def _check(signals: object, dictionary: object, n_nonzero: int | None, tol: float | None) -> tuple[Tensor, Tensor]:
    for value, name in ((signals, "signals"), (dictionary, "dictionary")):
        if not isinstance(value, Tensor):
            raise TypeError(f"{FUNCTION}: argument '{name}' must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{FUNCTION}: argument '{name}' must be a floating tensor, got {value.dtype}")
    assert isinstance(signals, Tensor) and isinstance(dictionary, Tensor)
    if signals.dim() != 2:
        raise ValueError(f"{FUNCTION}: argument 'signals' must be [P, E], got shape {list(signals.shape)}")
    expected = None
    if dictionary.dim() != 2 or dictionary.shape[0] == 0:
        expected = "be a non-empty [M, E] matrix of atoms"
    elif dictionary.shape[1] != signals.shape[1]:
        expected = f"have width {signals.shape[1]} (E, the size of the signals)"
    if expected is not None:
        raise ValueError(f"{FUNCTION}: argument 'dictionary' must {expected}, got shape {list(dictionary.shape)}")
    if signals.device != dictionary.device:
        raise ValueError(
            f"{FUNCTION}: arguments 'signals' and 'dictionary' must be on the same device, got {signals.device} "
            f"and {dictionary.device}"
        )
    if n_nonzero is None and tol is None:
        raise ValueError(f"{FUNCTION}: give 'n_nonzero' (atoms per signal) or 'tol' (squared residual norm)")
    if n_nonzero is not None and not 1 <= n_nonzero <= dictionary.shape[0]:
        raise ValueError(
            f"{FUNCTION}: argument 'n_nonzero' must be in [1, {dictionary.shape[0]}] (the number of atoms), "
            f"got {n_nonzero}"
        )
    if tol is not None and not tol >= 0:
        raise ValueError(f"{FUNCTION}: argument 'tol' must be >= 0, got {tol}")
    _check_finite(signals, "signals")
    return signals, dictionary


def _check_finite(value: Tensor, name: str) -> None:
    if value.numel() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{FUNCTION}: argument '{name}' must be finite (no NaN or Inf)")


def _pursue(
    signals: Tensor, atoms: Tensor, steps: int, tol: float | None, progress: bool | None, gram: DictionaryGram | None
) -> tuple:
    """OMP of ``signals [P, E]`` over ``atoms [M, E]`` (one dtype): (indices, coefficients, counts, residual norms).

    Every step runs on the whole batch (no gathers of the per-signal state): signals that stopped keep
    their state, masked out of the updates. With ``gram``, a step's correlations are ``alpha0 - G_{:,S} gamma``
    when that costs less than the product with the whole dictionary (:func:`_gram_union`).
    """
    count, embed = signals.shape
    dtype, device = signals.dtype, signals.device
    # scikit-learn's thresholds (it computes in float64); in float32 the linear-dependence test is relative to
    # the atom's squared norm at float32's rounding level.
    no_correlation = torch.finfo(torch.float64).eps
    dependence = torch.finfo(torch.float64).eps if dtype == torch.float64 else 16 * torch.finfo(dtype).eps
    relative = dtype != torch.float64
    basis = signals.new_zeros((count, steps, embed))  # [P, k, E] orthonormal basis Q of each support
    upper = signals.new_zeros((count, steps, steps))  # [P, k, k] R with D_S^T = Q^T R
    projections = signals.new_zeros((count, steps))  # [P, k] Q^T y
    indices = torch.full((count, steps), -1, dtype=torch.long, device=device)
    counts = torch.zeros(count, dtype=torch.long, device=device)
    active = torch.ones(count, dtype=torch.bool, device=device)
    residual = signals.clone()
    correlations = signals.new_empty((count, atoms.shape[0]))  # [P, M], reused every step
    alpha0 = torch.mm(signals, atoms.T) if gram is not None else None  # [P, M] D y, for the Gram form
    direct_cost = 2.0 * count * atoms.shape[0] * embed
    for step in _progress.progress(range(steps), desc="orthogonal matching pursuit", total=steps, enabled=progress):
        if not bool(active.any()):
            break
        plan = _gram_union(indices, step, gram, direct_cost) if gram is not None and step > 0 else None
        if alpha0 is not None and step == 0:
            correlations.copy_(alpha0)
        elif plan is not None and alpha0 is not None and gram is not None:
            union, inverse, valid = plan
            gamma = torch.linalg.solve_triangular(upper[:, :step, :step], projections[:, :step, None], upper=True)
            weights = signals.new_zeros((count, union.numel()))  # [P, U] coefficients over the union
            rows = torch.arange(count, device=device)[:, None].expand(count, step)
            weights.index_put_((rows[valid], inverse), gamma[..., 0][valid], accumulate=True)
            torch.addmm(alpha0, weights, gram.rows(union), beta=1, alpha=-1, out=correlations)  # D r
        else:
            torch.mm(residual, atoms.T, out=correlations)  # the only product with the whole dictionary
        best = correlations.abs_().argmax(1)  # [P]
        chosen = atoms[best]  # [P, E]
        initial = (chosen * signals).sum(1)  # the atom's correlation with the signal itself
        repeated = (indices[:, :step] == best[:, None]).any(1)
        q = basis[:, :step]  # [P, k', E]
        coordinates = torch.bmm(q, chosen[:, :, None])  # [P, k', 1]: classical Gram-Schmidt, twice
        orthogonal = chosen - torch.bmm(q.transpose(1, 2), coordinates)[:, :, 0]
        again = torch.bmm(q, orthogonal[:, :, None])
        orthogonal = orthogonal - torch.bmm(q.transpose(1, 2), again)[:, :, 0]
        coordinates = (coordinates + again)[:, :, 0]  # [P, k']
        distance2 = (orthogonal * orthogonal).sum(1)  # squared distance of the atom to its support's span
        floor = dependence * (chosen * chosen).sum(1) if relative else torch.full_like(distance2, dependence)
        dependent = distance2 <= floor if step > 0 else torch.zeros_like(active)
        proceed = active & ~(repeated | (initial * initial < no_correlation) | dependent)
        active &= proceed
        norm = torch.where(proceed, distance2, torch.ones_like(distance2)).sqrt()
        new = orthogonal / norm[:, None] * proceed[:, None]  # [P, E], zero for signals that stopped
        basis[:, step] = new
        upper[:, :step, step] = coordinates * proceed[:, None]
        upper[:, step, step] = norm
        projections[:, step] = (new * signals).sum(1)
        indices[:, step] = torch.where(proceed, best, -1)
        counts += proceed
        residual -= projections[:, step, None] * new  # r = y - Q Q^T y, one new direction at a time
        if tol is not None:
            active &= (residual * residual).sum(1) > tol
    valid = torch.arange(steps, device=device)[None, :] < counts[:, None]  # [P, k]
    diagonal = torch.where(valid, upper.diagonal(dim1=1, dim2=2), torch.ones((), dtype=dtype, device=device))
    upper.diagonal(dim1=1, dim2=2).copy_(diagonal)  # unit diagonal past the support: zero coefficients there
    coefficients = torch.linalg.solve_triangular(upper, (projections * valid)[..., None], upper=True)[..., 0]
    return indices, coefficients, counts, residual.norm(dim=1)


def orthogonal_matching_pursuit(
    signals: Tensor,
    dictionary: Tensor,
    n_nonzero: int | None = None,
    *,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int = 1024,
    progress: bool | None = None,
    gram: DictionaryGram | bool | None = None,
) -> SparseCode:
    """Sparse codes of ``signals [P, E]`` over the atoms (rows) of ``dictionary [M, E]``, all signals at once.

    ``min |y - D_S^T gamma|`` over supports ``S`` of ``n_nonzero`` atoms chosen greedily (see the module
    docstring); the same supports and coefficients as scikit-learn's ``OrthogonalMatchingPursuit`` with
    ``fit_intercept=False``.

    Args:
        signals: ``[P, E]`` signals (e.g. neuron directions), any floating dtype, CPU or CUDA.
        dictionary: ``[M, E]`` atoms (e.g. text embeddings) on the signals' device.
        n_nonzero: atoms per signal, at most M (default with ``tol``: up to ``min(M, E)``).
        tol: stop a signal when its squared residual norm is at most ``tol``.
        dtype: computation dtype (default: float64 for float64 inputs, else float32).
        batch_size: signals per batch (memory: ``batch_size x (M + n_nonzero x E)`` values).
        progress: progress bar over the steps (default: the global setting).
        gram: the :class:`DictionaryGram` of ``dictionary`` (Batch-OMP with its cached columns); None (default):
            the automatic cache of the last dictionary; False: no Gram form (every step multiplies by the whole
            dictionary); True: same as None.

    Raises:
        TypeError, ValueError naming the argument: a dictionary whose width differs from the signals',
        ``n_nonzero`` above the number of atoms, non-finite values, mixed devices.
    """
    signals, dictionary = _check(signals, dictionary, n_nonzero, tol)
    if batch_size < 1:
        raise ValueError(f"{FUNCTION}: argument 'batch_size' must be >= 1, got {batch_size}")
    if dtype is None:
        dtype = torch.float64 if torch.float64 in (signals.dtype, dictionary.dtype) else torch.float32
    steps = n_nonzero if n_nonzero is not None else min(dictionary.shape[0], dictionary.shape[1])
    cache = _gram_for(dictionary, dtype, gram)
    atoms = cache.atoms if cache is not None else dictionary.detach().to(dtype)
    parts = []
    with torch.no_grad():
        for start in range(0, max(signals.shape[0], 1), batch_size):
            batch = signals[start : start + batch_size].detach().to(dtype)
            parts.append(_pursue(batch, atoms, steps, tol, progress, cache))
    indices, coefficients, counts, norms = (torch.cat(items) for items in zip(*parts, strict=True))
    return SparseCode(indices, coefficients, counts, norms, int(dictionary.shape[0]))


@dataclass
class TextDecomposition:
    """Sparse text decompositions of ``P`` directions.

    Attributes:
        code: the :class:`SparseCode` over the (centred, unit) text dictionary.
        texts: the M texts (None when only embeddings were given).
        dictionary: ``[M, E]`` the dictionary actually used (after centering and normalization).
    """

    code: SparseCode
    texts: list[str] | None
    dictionary: Tensor

    def terms(self, direction: int) -> list[tuple[str | int, float]]:
        """``(text or index, coefficient)`` of one direction, by decreasing ``|coefficient|``."""
        count = int(self.code.counts[direction])
        indices = self.code.indices[direction, :count].tolist()
        values = self.code.coefficients[direction, :count].tolist()
        pairs = sorted(zip(indices, values, strict=True), key=lambda pair: -abs(pair[1]))
        return [(self.texts[i] if self.texts is not None else i, v) for i, v in pairs]

    def format(self, names: Sequence[str] | None = None, *, max_terms: int = 10) -> str:
        """A Markdown table per direction: text, coefficient (largest first)."""
        lines = []
        for direction in range(self.code.indices.shape[0]):
            title = names[direction] if names is not None else f"direction {direction}"
            lines += [f"### {title}", "", "| text | coefficient |", "|---|---|"]
            lines += [f"| {text} | {value:+.3f} |" for text, value in self.terms(direction)[:max_terms]]
            lines.append("")
        return "\n".join(lines)


_last_bank: tuple | None = None  # (weakref to the embeddings, versions of both, center, normalize, bank)


def _prepared_bank(text_embeddings: Tensor, center: bool, normalize: bool) -> Tensor:
    """The centred, unit dictionary; the same tensor for repeated calls with unchanged embeddings, so that the
    automatic Gram cache of :func:`orthogonal_matching_pursuit` serves them all (e.g. one call per layer)."""
    global _last_bank
    if _last_bank is not None:
        source, versions, was_centred, was_normalized, bank = _last_bank
        if (source() is text_embeddings and (text_embeddings._version, bank._version) == versions
                and (was_centred, was_normalized) == (center, normalize)):  # fmt: skip
            return bank
    bank = text_embeddings.detach().float() if text_embeddings.dtype != torch.float64 else text_embeddings.detach()
    if center:
        bank = bank - bank.mean(0, keepdim=True)
    if normalize:
        bank = bank / bank.norm(dim=1, keepdim=True).clamp_min(torch.finfo(bank.dtype).tiny)
    _last_bank = (weakref.ref(text_embeddings), (text_embeddings._version, bank._version), center, normalize, bank)
    return bank


def sparse_text_decomposition(
    directions: Tensor,
    text_embeddings: Tensor,
    texts: Sequence[str] | None = None,
    *,
    n_nonzero: int = 32,
    center: bool = True,
    normalize: bool = True,
    **options: object,
) -> TextDecomposition:
    """Each direction ``[P, E]`` as a sparse combination of ``n_nonzero`` text embeddings ``[M, E]`` (OMP).

    The dictionary is ``T - mean(T)`` (``center``) with unit rows (``normalize``), as in the paper's
    decomposition of neurons' principal directions. ``options`` go to :func:`orthogonal_matching_pursuit`
    (``dtype``, ``batch_size``, ``tol``, ``progress``).
    """
    function = "vision_kernels.clip.sparse_text_decomposition"
    if texts is not None and isinstance(text_embeddings, Tensor) and len(texts) != text_embeddings.shape[0]:
        raise ValueError(
            f"{function}: argument 'texts' must have one string per text embedding ({text_embeddings.shape[0]}), "
            f"got {len(texts)}"
        )
    _check(directions, text_embeddings, n_nonzero, None)
    bank = _prepared_bank(text_embeddings, center, normalize)
    code = orthogonal_matching_pursuit(directions, bank, n_nonzero, **options)  # type: ignore[arg-type]
    return TextDecomposition(code=code, texts=list(texts) if texts is not None else None, dictionary=bank)
