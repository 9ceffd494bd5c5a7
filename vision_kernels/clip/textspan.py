"""TextSpan: a greedy basis of text directions for one head's output space (Gandelsman et al., Sec. 4.1).

Given a head's contributions ``X [K, E]`` over K images and a bank of text embeddings
``T [M, E]``, TextSpan projects the texts onto the span of the top-``rank`` right singular
vectors of ``X``, centres ``X``, and repeats ``num_texts`` times: pick the text whose projection of
the (current) data has the largest variance over the images, then remove that direction from the
data and from every text. The chosen texts, in order, describe the head; the variance of the
data explained after each step measures how well they do.

Two exact forms of the same algorithm:

* ``method="direct"`` (the original code): every step projects all K images on all M texts,
  ``K x M x E`` work per step, and deflates the ``[K, E]`` data.
* ``method="covariance"`` (default): the data enter only through their Gram matrix ``X^T X``
  (computed once, ``K E^2``). In the coordinates of the rank-``r`` basis ``Q`` the centred
  covariance is ``S = Q (X^T X - K mu mu^T) Q^T / (K - 1)`` and a text with coordinates ``c`` has
  projection variance ``c^T S c``; deflating by a unit direction ``u`` is ``S <- P S P`` with
  ``P = I - u u^T``. A step costs ``M r^2`` (``r`` is the rank, at most the head size's order),
  independent of the number of images.

Both select the same texts (tested); the covariance form is the one to use at scale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _progress

__all__ = ["TextSpanResult", "text_span", "head_text_spans", "format_text_spans"]

FUNCTION = "vision_kernels.clip.text_span"
METHODS = ("covariance", "direct")


@dataclass
class TextSpanResult:
    """The greedy text basis of one head.

    Attributes:
        indices: positions in the text bank of the chosen texts, in selection order.
        texts: the chosen texts (None when no strings were given).
        explained_variance: ``[m]`` fraction of the contributions' total variance explained after
            each step (cumulative, non-decreasing).
        basis: ``[m, E]`` the chosen texts' directions after deflation (mutually orthogonal, in the
            data's rank-``r`` span).
        mean: ``[E]`` mean contribution over the images.
        projected_variance: ``[m]`` variance of the (deflated) data along each chosen direction.
        method: ``"covariance"`` or ``"direct"``.
        rank: dimension of the span the texts were projected onto (after clipping to the numerical rank).
    """

    indices: list[int]
    texts: list[str] | None
    explained_variance: Tensor
    basis: Tensor
    mean: Tensor
    projected_variance: Tensor
    method: str
    rank: int

    def reconstruct(self, contributions: Tensor) -> Tensor:
        """``mean + (x - mean)`` projected on the chosen directions, ``[K, E]`` (the TextSpan replacement of a head)."""
        basis = self.basis.to(contributions.dtype)  # [m, E], orthogonal rows
        centred = contributions - self.mean.to(contributions.dtype)
        coefficients = (centred @ basis.T) / (basis * basis).sum(1).clamp_min(torch.finfo(basis.dtype).tiny)
        return self.mean.to(contributions.dtype) + coefficients @ basis


def _check(contributions: object, text_embeddings: object, texts: Sequence[str] | None, num_texts: int) -> None:
    if not isinstance(contributions, Tensor):
        raise TypeError(
            f"{FUNCTION}: argument 'contributions' must be a torch.Tensor, got {type(contributions).__name__}"
        )
    if not isinstance(text_embeddings, Tensor):
        raise TypeError(
            f"{FUNCTION}: argument 'text_embeddings' must be a torch.Tensor, got {type(text_embeddings).__name__}"
        )
    if contributions.dim() != 2:
        raise ValueError(
            f"{FUNCTION}: argument 'contributions' must have 2 dimensions [K, E], got shape {list(contributions.shape)}"
        )
    if contributions.shape[0] < 2:
        raise ValueError(
            f"{FUNCTION}: argument 'contributions' must hold at least 2 images to have a variance, "
            f"got shape {list(contributions.shape)}"
        )
    if text_embeddings.dim() != 2 or text_embeddings.shape[0] == 0:
        raise ValueError(
            f"{FUNCTION}: argument 'text_embeddings' must be a non-empty text bank [M, E] with M >= 1, "
            f"got shape {list(text_embeddings.shape)}"
        )
    if text_embeddings.shape[1] != contributions.shape[1]:
        raise ValueError(
            f"{FUNCTION}: argument 'text_embeddings' must have size {contributions.shape[1]} in dimension 1 "
            f"(E, the embedding size of contributions), got shape {list(text_embeddings.shape)}"
        )
    if texts is not None and len(texts) != text_embeddings.shape[0]:
        raise ValueError(
            f"{FUNCTION}: argument 'texts' must have one string per text embedding ({text_embeddings.shape[0]}), "
            f"got {len(texts)}"
        )
    if num_texts < 1:
        raise ValueError(f"{FUNCTION}: argument 'num_texts' must be >= 1, got {num_texts}")
    # One float64 sum per input: NaN and Inf propagate to it (finite float32/16 values cannot overflow it).
    finite = [bool(torch.isfinite(t.sum(dtype=torch.float64))) for t in (contributions, text_embeddings)]
    if not all(finite):
        raise ValueError(f"{FUNCTION}: arguments 'contributions' and 'text_embeddings' must be finite (no NaN or Inf)")


def _covariance_form(
    data: Tensor, bank: Tensor, num_texts: int, rank: int, rank_rtol: float, tolerance: float
) -> tuple[list[int], Tensor, Tensor, Tensor, Tensor, int]:
    """(indices, explained [m], basis [m, E], mean [E], variance [m]) from the Gram matrix only."""
    count = data.shape[0]
    mean = data.mean(0)  # [E]
    gram = data.T @ data  # [E, E], the only pass over the images
    with _single_thread(data.device):
        return _covariance_steps(gram, mean, count, bank, num_texts, rank, rank_rtol, tolerance)


def _covariance_steps(
    gram: Tensor, mean: Tensor, count: int, bank: Tensor, num_texts: int, rank: int, rank_rtol: float, tolerance: float
) -> tuple[list[int], Tensor, Tensor, Tensor, Tensor, int]:
    """The greedy steps of the covariance form, from the Gram matrix and the mean of the data."""
    values, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues = squared singular values
    rank = min(rank, int((values > (rank_rtol**2) * values[-1].clamp_min(0)).sum()))
    basis_rows = vectors[:, values.shape[0] - rank :].flip(-1).T  # [r, E]: top-r right singular vectors
    covariance = (gram - count * torch.outer(mean, mean)) / (count - 1)  # [E, E] centred
    total = covariance.trace()
    span = basis_rows @ covariance @ basis_rows.T  # [r, r]
    coordinates = bank @ basis_rows.T  # [M, r]: texts projected on the span, in its coordinates
    smallest = _norm_floor(coordinates)
    indices, explained, chosen, variances = [], [], [], []
    kept = span.trace()
    for _ in range(num_texts):
        variance = ((coordinates @ span) * coordinates).sum(1)  # [M]: c^T S c
        best = int(variance.argmax())
        c = coordinates[best]  # [r]
        norm2 = c @ c
        if not (norm2 > smallest and variance[best] > tolerance * total * norm2):
            break
        u = c / norm2.sqrt()
        su = span @ u
        span = span - torch.outer(u, su) - torch.outer(su, u) + (u @ su) * torch.outer(u, u)  # P S P
        coordinates = coordinates - torch.outer(coordinates @ c / norm2, c)  # texts deflated by c
        indices.append(best)
        variances.append(variance[best] / norm2)
        chosen.append(c @ basis_rows)
        explained.append((kept - span.trace()) / total)
    return indices, _stack(explained, gram), _stack_rows(chosen, gram), mean, _stack(variances, gram), rank


def _direct_form(
    data: Tensor, bank: Tensor, num_texts: int, rank: int, rank_rtol: float, tolerance: float
) -> tuple[list[int], Tensor, Tensor, Tensor, Tensor, int]:
    """The original algorithm: project every image on every text at every step."""
    _, singular, vh = torch.linalg.svd(data, full_matrices=False)
    rank = min(rank, int((singular > rank_rtol * singular[0]).sum()))
    vh = vh[:rank]  # [r, E]
    texts = bank @ vh.T @ torch.linalg.inv(vh @ vh.T) @ vh  # [M, E] projected on the span
    smallest = _norm_floor(texts)
    mean = data.mean(0)
    centred = data - mean  # [K, E]
    total = (centred * centred).sum() / (data.shape[0] - 1)
    indices, explained, chosen, variances = [], [], [], []
    for _ in range(num_texts):
        projection = centred @ texts.T  # [K, M]
        variance = projection.var(0)  # unbiased, as torch.std in the original
        best = int(variance.argmax())
        t = texts[best]
        norm2 = t @ t
        if not (norm2 > smallest and variance[best] > tolerance * total * norm2):
            break
        centred = centred - torch.outer(centred @ t / norm2, t)
        texts = texts - torch.outer(texts @ t / norm2, t)
        indices.append(best)
        variances.append(variance[best] / norm2)
        chosen.append(t)
        explained.append(1 - (centred * centred).sum() / (data.shape[0] - 1) / total)
    return indices, _stack(explained, data), _stack_rows(chosen, data), mean, _stack(variances, data), rank


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """Run small CPU work on one thread: LAPACK's threaded eigh of an E x E matrix (E ~ 512-1024) and
    the per-step [M, r] updates are latency-bound, and on busy cores every parallel region waits
    for a second thread to be scheduled (several times slower than one thread)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _norm_floor(texts: Tensor) -> Tensor:
    """Squared norm below which a deflated text is numerically zero (its direction is used up)."""
    return (texts * texts).sum(1).max() * 1e-9


def _stack(values: list[Tensor], like: Tensor) -> Tensor:
    return torch.stack(values) if values else like.new_zeros(0)


def _stack_rows(rows: list[Tensor], like: Tensor) -> Tensor:
    return torch.stack(rows) if rows else like.new_zeros((0, like.shape[1]))


def text_span(
    contributions: Tensor,
    text_embeddings: Tensor,
    texts: Sequence[str] | None = None,
    *,
    num_texts: int = 10,
    rank: int = 80,
    method: str = "covariance",
    dtype: torch.dtype = torch.float64,
    rank_rtol: float = 1e-6,
    tolerance: float = 1e-12,
) -> TextSpanResult:
    """Greedy TextSpan basis of ``num_texts`` texts for one head.

    Args:
        contributions: ``[K, E]`` the head's direct contributions for K images (e.g.
            ``decompose(...).heads[:, layer, head]``, summed over tokens).
        text_embeddings: ``[M, E]`` text bank embeddings (normalized or not, as the paper uses them).
        texts: the M strings (optional; copied into the result).
        num_texts: how many texts to choose (fewer if the data's variance runs out first).
        rank: the texts are projected onto the span of the top-``rank`` right singular vectors of
            the contributions (the original uses 80). It is clipped to the numerical rank (singular
            values above ``rank_rtol`` x the largest): beyond it the span is not unique (a head's
            output has rank at most its head size, 64 in most CLIPs, so the original's 80 would
            mix in arbitrary zero-variance directions that change the deflated texts).
        rank_rtol: relative singular-value threshold of the numerical rank.
        method: ``"covariance"`` (cost per step independent of K) or ``"direct"`` (the original).
        dtype: computation dtype (float64 by default; the Gram form squares singular values).
        tolerance: stop when the best remaining variance is below ``tolerance`` x the total.

    Raises:
        ValueError: empty text bank, mismatched sizes, fewer than 2 images, non-finite values,
        unknown method.
    """
    _check(contributions, text_embeddings, texts, num_texts)
    if method not in METHODS:
        raise ValueError(f"{FUNCTION}: argument 'method' must be one of {METHODS}, got {method!r}")
    rank = max(1, min(int(rank), contributions.shape[0], contributions.shape[1]))
    data = contributions.detach().to(dtype)
    bank = text_embeddings.detach().to(device=data.device, dtype=dtype)
    form = _covariance_form if method == "covariance" else _direct_form
    indices, explained, basis, mean, variances, rank = form(data, bank, num_texts, rank, rank_rtol, tolerance)
    return TextSpanResult(
        indices=indices,
        texts=[texts[i] for i in indices] if texts is not None else None,
        explained_variance=explained,
        basis=basis,
        mean=mean,
        projected_variance=variances,
        method=method,
        rank=rank,
    )


def head_text_spans(
    contributions: Tensor,
    text_embeddings: Tensor,
    texts: Sequence[str] | None = None,
    *,
    heads: Iterable[tuple[int, int]] | None = None,
    layers: Sequence[int] | None = None,
    **options: object,
) -> dict[tuple[int, int], TextSpanResult]:
    """:func:`text_span` for many heads of ``contributions [K, L, H, E]`` (e.g. ``decompose(...).heads``).

    Args:
        contributions: ``[K, L, H, E]`` head contributions summed over tokens.
        heads: ``(layer position, head)`` pairs to run (default: every head of ``layers``).
        layers: model layer of each position along axis 1, used as the result's keys (default
            0..L-1; pass ``decomposition.layers``).
        options: forwarded to :func:`text_span` (``num_texts``, ``rank``, ``method``, ...).

    Returns:
        ``{(layer, head): TextSpanResult}``.
    """
    if not isinstance(contributions, Tensor) or contributions.dim() != 4:
        shape = list(contributions.shape) if isinstance(contributions, Tensor) else type(contributions).__name__
        raise ValueError(
            f"vision_kernels.clip.head_text_spans: argument 'contributions' must be a [K, L, H, E] tensor, got {shape}"
        )
    layer_ids = list(layers) if layers is not None else list(range(contributions.shape[1]))
    pairs = (
        list(heads)
        if heads is not None
        else [(p, h) for p in range(contributions.shape[1]) for h in range(contributions.shape[2])]
    )
    results = {}
    for position, head in _progress.progress(pairs, desc="TextSpan heads", total=len(pairs)):
        results[(layer_ids[position], head)] = text_span(
            contributions[:, position, head],
            text_embeddings,
            texts,
            **options,  # type: ignore[arg-type]
        )
    return results


def format_text_spans(results: dict[tuple[int, int], TextSpanResult], *, max_texts: int | None = None) -> str:
    """A Markdown table per head: rank, chosen text, cumulative explained variance."""
    lines = []
    for (layer, head), result in results.items():
        lines += [f"### Layer {layer}, head {head}", "", "| # | text | explained variance |", "|---|---|---|"]
        names = result.texts or [f"text {i}" for i in result.indices]
        count = len(names) if max_texts is None else min(max_texts, len(names))
        for k in range(count):
            lines.append(f"| {k + 1} | {names[k]} | {float(result.explained_variance[k]):.3f} |")
        lines.append("")
    return "\n".join(lines)
