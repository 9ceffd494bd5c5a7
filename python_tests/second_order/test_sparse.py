"""Batched orthogonal matching pursuit against scikit-learn's OrthogonalMatchingPursuit (same supports in the same
order, coefficients within 1e-4), early stops, batching, and the sparse text decomposition."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import OrthogonalMatchingPursuit, orthogonal_mp

import vision_kernels.clip as vc
from vision_kernels.clip import orthogonal_matching_pursuit as omp
from vision_kernels.clip import sparse
from vision_kernels.clip.sparse import DictionaryGram


def problem(atoms: int, embed: int, signals: int, seed: int = 0, dtype=torch.float64, correlated: bool = False):
    generator = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, embed, generator=generator, dtype=torch.float64)
    if correlated:  # text-embedding-like: a shared component and a few clusters
        dictionary = dictionary + 2.0 * torch.randn(1, embed, generator=generator, dtype=torch.float64)
    dictionary = torch.nn.functional.normalize(dictionary, dim=1)
    signals_ = torch.randn(signals, embed, generator=generator, dtype=torch.float64)
    return signals_.to(dtype), dictionary.to(dtype)


def sklearn_codes(signals: torch.Tensor, dictionary: torch.Tensor, **options) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ended prematurely" on purpose in some cases
        model = OrthogonalMatchingPursuit(fit_intercept=False, **options)
        model.fit(dictionary.double().T.numpy(), signals.double().T.numpy())
    return np.atleast_2d(model.coef_)


def selection_order(signal: torch.Tensor, dictionary: torch.Tensor, count: int) -> list[int]:
    """scikit-learn's support in selection order (from the coefficient path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = orthogonal_mp(dictionary.double().T.numpy(), signal.double().numpy(), n_nonzero_coefs=count,
                             return_path=True)  # fmt: skip
    path = np.atleast_2d(path.T if path.ndim == 2 else path)
    order: list[int] = []
    for step in path.reshape(-1, dictionary.shape[0]):
        order += [int(i) for i in np.flatnonzero(step) if int(i) not in order]
    return order


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("atoms", "embed", "signals", "nonzero", "correlated"),
                         [(300, 40, 17, 12, False), (500, 32, 9, 24, True), (50, 64, 5, 50, False)])  # fmt: skip
def test_same_support_and_coefficients_as_sklearn(dtype, atoms, embed, signals, nonzero, correlated) -> None:
    y, dictionary = problem(atoms, embed, signals, dtype=dtype, correlated=correlated)
    code = omp(y, dictionary, nonzero)
    want = sklearn_codes(y, dictionary, n_nonzero_coefs=nonzero)
    got = code.dense().double().numpy()
    assert ((got != 0) == (want != 0)).all()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    assert np.abs(got - want).max() <= tolerance * max(1.0, np.abs(want).max())
    assert code.indices.shape == (signals, nonzero) and bool((code.counts == nonzero).all())
    residual = (y.double() - code.reconstruct(dictionary).double()).norm(dim=1)
    torch.testing.assert_close(code.residual_norms.double(), residual, rtol=1e-4, atol=1e-5)


def test_full_rank_supports_in_float64() -> None:
    # As many atoms as dimensions on a coherent dictionary: the last choices are near-ties that float32 may
    # break differently; float64 keeps scikit-learn's choices to the end.
    y, dictionary = problem(500, 32, 9, correlated=True)
    got = omp(y, dictionary, 32).dense().numpy()
    want = sklearn_codes(y, dictionary, n_nonzero_coefs=32)
    assert ((got != 0) == (want != 0)).all() and np.abs(got - want).max() < 1e-8 * np.abs(want).max()


def test_selection_order_matches_sklearn_path() -> None:
    y, dictionary = problem(200, 24, 4, seed=1)
    code = omp(y, dictionary, 10)
    for row in range(4):
        assert code.indices[row].tolist() == selection_order(y[row], dictionary, 10)


def test_tolerance_stop_matches_sklearn() -> None:
    y, dictionary = problem(300, 40, 12, seed=2)
    code = omp(y, dictionary, tol=0.5)
    want = sklearn_codes(y, dictionary, tol=0.5)
    got = code.dense().numpy()
    assert ((got != 0) == (want != 0)).all() and np.abs(got - want).max() < 1e-10
    assert bool((code.residual_norms**2 <= 0.5 + 1e-12).all())
    assert bool((code.counts < 40).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linearly_dependent_dictionary_stops_early_like_sklearn(dtype) -> None:
    y, dictionary = problem(5, 40, 6, seed=3)
    doubled = torch.cat([dictionary, 2 * dictionary]).to(dtype)  # each atom twice: 5 independent directions
    code = omp(y.to(dtype), doubled, 8)
    want = sklearn_codes(y, doubled, n_nonzero_coefs=8)
    assert bool((code.counts == 5).all()) and code.indices[:, 5:].eq(-1).all()
    got = code.dense().double().numpy()
    assert ((got != 0) == (want != 0)).all() and np.abs(got - want).max() < 1e-4


def test_zero_signal_selects_nothing() -> None:
    _, dictionary = problem(30, 8, 1, seed=4)
    y = torch.zeros(2, 8, dtype=torch.float64)
    y[1] = dictionary[7] * 3
    code = omp(y, dictionary, 3)
    assert code.counts[0] == 0 and not code.dense()[0].any()  # no correlation at all: nothing selected
    assert code.indices[1, 0] == 7 and abs(float(code.coefficients[1, 0]) - 3.0) < 1e-12
    want = sklearn_codes(y, dictionary, n_nonzero_coefs=3)
    assert ((code.dense().numpy() != 0) == (want != 0)).all() and np.abs(code.dense().numpy() - want).max() < 1e-10


def test_batches_and_empty_signals() -> None:
    y, dictionary = problem(100, 16, 23, seed=5)
    whole = omp(y, dictionary, 6)
    parts = omp(y, dictionary, 6, batch_size=5)
    assert torch.equal(parts.indices, whole.indices)
    torch.testing.assert_close(parts.coefficients, whole.coefficients)
    empty = omp(y[:0], dictionary, 6)
    assert empty.indices.shape == (0, 6) and empty.dense().shape == (0, 100)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda y, d: omp(y, d[:, :7], 3), ValueError, r"argument 'dictionary' must have width 8 \(E, the size of"),
        (lambda y, d: omp(y, d, 31), ValueError, r"argument 'n_nonzero' must be in \[1, 30\] \(the number of atoms\)"),
        (lambda y, d: omp(y, d, 0), ValueError, r"argument 'n_nonzero' must be in \[1, 30\]"),
        (lambda y, d: omp(y, d), ValueError, r"give 'n_nonzero' \(atoms per signal\) or 'tol'"),
        (lambda y, d: omp(y, d, tol=-1.0), ValueError, r"argument 'tol' must be >= 0"),
        (lambda y, d: omp(y[0], d, 3), ValueError, r"argument 'signals' must be \[P, E\]"),
        (lambda y, d: omp(y, d[:0], 3), ValueError, r"argument 'dictionary' must be a non-empty \[M, E\]"),
        (lambda y, d: omp(y, d.int(), 3), TypeError, r"argument 'dictionary' must be a floating tensor"),
        (lambda y, d: omp(y.numpy(), d, 3), TypeError, r"argument 'signals' must be a torch.Tensor"),
        (lambda y, d: omp(y * float("nan"), d, 3), ValueError, r"argument 'signals' must be finite"),
        (
            lambda y, d: omp(y, torch.empty(d.shape, device="meta"), 3),
            ValueError,
            r"arguments 'signals' and 'dictionary' must be on the same",
        ),
        (lambda y, d: omp(y, d, 3, batch_size=0), ValueError, r"argument 'batch_size' must be >= 1"),
    ],
)
def test_bad_input(call, error, message) -> None:
    y, dictionary = problem(30, 8, 3, seed=6)
    with pytest.raises(error, match=r"vision_kernels\.clip\.orthogonal_matching_pursuit: " + message):
        call(y, dictionary)


def test_sparse_text_decomposition() -> None:
    generator = torch.Generator().manual_seed(7)
    texts = [f"text {i}" for i in range(40)]
    embeddings = torch.randn(40, 12, generator=generator) + 3.0  # a large shared mean, as CLIP texts have
    bank = embeddings - embeddings.mean(0)
    bank = bank / bank.norm(dim=1, keepdim=True)
    directions = torch.stack([2 * bank[3] - 0.5 * bank[17], bank[8]])
    result = vc.sparse_text_decomposition(directions, embeddings, texts, n_nonzero=2)
    torch.testing.assert_close(result.dictionary, bank)
    assert result.terms(0)[0][0] == "text 3" and abs(result.terms(0)[0][1] - 2.0) < 1e-4
    assert {t for t, _ in result.terms(0)} == {"text 3", "text 17"}
    assert result.terms(1)[0][0] == "text 8"
    table = result.format(["neuron 5", "neuron 9"], max_terms=1)
    assert "### neuron 5" in table and "| text 3 | +2.000 |" in table and "text 17" not in table
    plain = vc.sparse_text_decomposition(directions, embeddings, n_nonzero=2, center=False, normalize=False)
    assert plain.texts is None and torch.equal(plain.dictionary, embeddings)
    with pytest.raises(ValueError, match=r"argument 'texts' must have one string per text embedding \(40\), got 3"):
        vc.sparse_text_decomposition(directions, embeddings, texts[:3])
    with pytest.raises(ValueError, match=r"argument 'dictionary' must have width 12"):
        vc.sparse_text_decomposition(directions, embeddings[:, :5])


def always_gram(monkeypatch) -> None:
    """Make every step after the first take the Gram form (whatever its cost)."""
    original = sparse._gram_union
    monkeypatch.setattr(sparse, "_gram_union", lambda indices, steps, gram, cost: original(indices, steps, gram, 1e30))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("atoms", "embed", "signals", "nonzero", "correlated"),
                         [(300, 40, 17, 12, False), (500, 32, 9, 24, True), (50, 64, 5, 50, False)])  # fmt: skip
def test_gram_form_matches_sklearn_and_the_direct_form(monkeypatch, dtype, atoms, embed, signals, nonzero, correlated):
    y, dictionary = problem(atoms, embed, signals, dtype=dtype, correlated=correlated)
    direct = omp(y, dictionary, nonzero, gram=False)
    always_gram(monkeypatch)
    gram = DictionaryGram(dictionary)
    cached = omp(y, dictionary, nonzero, gram=gram)
    assert gram.computed > 0  # the Gram form really ran
    assert torch.equal(cached.indices, direct.indices) and torch.equal(cached.counts, direct.counts)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(cached.coefficients, direct.coefficients, rtol=0, atol=tolerance)
    want = sklearn_codes(y, dictionary, n_nonzero_coefs=nonzero)
    got = cached.dense().double().numpy()
    assert ((got != 0) == (want != 0)).all() and np.abs(got - want).max() <= tolerance * max(1.0, np.abs(want).max())
    again = omp(y, dictionary, nonzero, gram=gram)  # second call: every column served from the cache
    computed = gram.computed
    assert torch.equal(again.indices, direct.indices) and gram.computed == computed


def test_gram_cache_bounded_evicts_and_precomputes(monkeypatch) -> None:
    y, dictionary = problem(400, 24, 6, seed=8, correlated=True)
    direct = omp(y, dictionary, 10, gram=False)
    always_gram(monkeypatch)
    small = DictionaryGram(dictionary, max_bytes=25 * 400 * 8)  # 25 columns: a call needs <= 20, three calls 60
    assert small.capacity == 25
    for start in range(0, 6, 2):  # three calls of two signals: columns are replaced between calls
        part = omp(y[start : start + 2], dictionary, 10, gram=small)
        assert torch.equal(part.indices, direct.indices[start : start + 2])
        assert small.storage.shape[0] <= 25 and small.nbytes <= 25 * 400 * 8
    assert small.computed > 25  # columns were replaced
    assert int((small.owner >= 0).sum()) == len(set(small.owner[small.owner >= 0].tolist()))  # no atom twice
    cached = small.slot >= 0
    assert torch.equal(small.owner[small.slot[cached]], torch.nonzero(cached).flatten())  # slots consistent
    full = DictionaryGram(dictionary).precompute()
    torch.testing.assert_close(full.rows(torch.tensor([3, 7])), (dictionary @ dictionary.T)[[3, 7]])
    assert torch.equal(omp(y, dictionary, 10, gram=full).indices, direct.indices)
    with pytest.raises(ValueError, match=r"DictionaryGram.precompute: the whole Gram matrix \(400 columns\) exceeds"):
        small.precompute()


def test_gram_ties_and_degenerate_atoms(monkeypatch) -> None:
    # Each atom twice (exact ties, linearly dependent pairs) and a zero signal: same early stops in both forms.
    y, dictionary = problem(5, 40, 6, seed=3)
    doubled = torch.cat([dictionary, dictionary])
    y[0] = 0
    direct = omp(y, doubled, 8, gram=False)
    always_gram(monkeypatch)
    cached = omp(y, doubled, 8, gram=DictionaryGram(doubled))
    # An exact tie goes to either copy of an atom, by rounding (in scikit-learn too): same atoms modulo the copy.
    assert torch.equal(cached.indices.remainder(5), direct.indices.remainder(5))
    assert torch.equal(cached.counts, direct.counts)
    assert int(cached.counts[0]) == 0 and bool((cached.counts[1:] == 5).all())
    torch.testing.assert_close(cached.coefficients, direct.coefficients)
    torch.testing.assert_close(cached.reconstruct(doubled), direct.reconstruct(doubled))


def test_automatic_cache_follows_the_dictionary(monkeypatch) -> None:
    always_gram(monkeypatch)
    sparse.clear_gram_cache()
    y, dictionary = problem(200, 16, 4, seed=9)
    first = omp(y, dictionary, 6)
    cache = sparse._auto_gram
    assert cache is not None and cache.computed > 0
    computed = cache.computed
    omp(y, dictionary, 6)
    assert sparse._auto_gram is cache and cache.computed == computed  # reused: nothing recomputed
    dictionary[:100] = dictionary[100:].clone()  # in-place change: the cached columns are stale
    changed = omp(y, dictionary, 6)
    assert sparse._auto_gram is not cache
    assert torch.equal(changed.indices, omp(y, dictionary, 6, gram=False).indices)
    assert not torch.equal(changed.indices, first.indices)
    sparse.clear_gram_cache()
    assert sparse._auto_gram is None


def test_gram_belongs_to_one_dictionary() -> None:
    y, dictionary = problem(30, 8, 3, seed=6)
    gram = DictionaryGram(dictionary)
    assert omp(y, dictionary.clone(), 3, gram=gram).counts.eq(3).all()  # equal values, another tensor: accepted
    with pytest.raises(ValueError, match=r"argument 'gram' was built for another dictionary"):
        omp(y, dictionary + 1, 3, gram=gram)
    with pytest.raises(ValueError, match=r"argument 'gram' was built for another dictionary"):
        omp(y.float(), dictionary.float(), 3, gram=gram)  # float32 computation, float64 cache
    with pytest.raises(TypeError, match=r"argument 'gram' must be a DictionaryGram, True, False or None, got str"):
        omp(y, dictionary, 3, gram="yes")
    with pytest.raises(ValueError, match=r"argument 'dictionary' must be finite"):
        DictionaryGram(dictionary * float("inf"))
    with pytest.raises(ValueError, match=r"DictionaryGram: argument 'max_bytes' must be an int >= 0, got -1"):
        DictionaryGram(dictionary, max_bytes=-1)
