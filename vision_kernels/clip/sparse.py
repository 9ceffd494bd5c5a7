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

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _progress

__all__ = ["SparseCode", "TextDecomposition", "orthogonal_matching_pursuit", "sparse_text_decomposition"]

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


def _check(signals: object, dictionary: object, n_nonzero: int | None, tol: float | None) -> tuple[Tensor, Tensor]:
    for value, name in ((signals, "signals"), (dictionary, "dictionary")):
        if not isinstance(value, Tensor):
            raise TypeError(f"{FUNCTION}: argument '{name}' must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{FUNCTION}: argument '{name}' must be a floating tensor, got {value.dtype}")
    assert isinstance(signals, Tensor) and isinstance(dictionary, Tensor)
    if signals.dim() != 2:
        raise ValueError(f"{FUNCTION}: argument 'signals' must be [P, E], got shape {list(signals.shape)}")
    if dictionary.dim() != 2 or dictionary.shape[0] == 0:
        raise ValueError(
            f"{FUNCTION}: argument 'dictionary' must be a non-empty [M, E] matrix of atoms, got shape "
            f"{list(dictionary.shape)}"
        )
    if dictionary.shape[1] != signals.shape[1]:
        raise ValueError(
            f"{FUNCTION}: argument 'dictionary' must have width {signals.shape[1]} (E, the size of the signals), "
            f"got shape {list(dictionary.shape)}"
        )
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
    for value, name in ((signals, "signals"), (dictionary, "dictionary")):
        if value.numel() and not bool(torch.isfinite(value.sum(dtype=torch.float64))):
            raise ValueError(f"{FUNCTION}: argument '{name}' must be finite (no NaN or Inf)")
    return signals, dictionary


def _pursue(signals: Tensor, atoms: Tensor, steps: int, tol: float | None, progress: bool | None) -> tuple:
    """OMP of ``signals [P, E]`` over ``atoms [M, E]`` (one dtype): (indices, coefficients, counts, residual norms).

    Every step runs on the whole batch (no gathers of the per-signal state): signals that stopped keep
    their state, masked out of the updates.
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
    for step in _progress.progress(range(steps), desc="orthogonal matching pursuit", total=steps, enabled=progress):
        if not bool(active.any()):
            break
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
    atoms = dictionary.detach().to(dtype)
    parts = []
    with torch.no_grad():
        for start in range(0, max(signals.shape[0], 1), batch_size):
            batch = signals[start : start + batch_size].detach().to(dtype)
            parts.append(_pursue(batch, atoms, steps, tol, progress))
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
    bank = text_embeddings.detach().float() if text_embeddings.dtype != torch.float64 else text_embeddings.detach()
    if center:
        bank = bank - bank.mean(0, keepdim=True)
    if normalize:
        bank = bank / bank.norm(dim=1, keepdim=True).clamp_min(torch.finfo(bank.dtype).tiny)
    code = orthogonal_matching_pursuit(directions, bank, n_nonzero, **options)  # type: ignore[arg-type]
    return TextDecomposition(code=code, texts=list(texts) if texts is not None else None, dictionary=bank)
