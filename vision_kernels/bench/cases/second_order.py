"""Benchmark cases of the CLIP-neuron family (family "second_order"), all on CPU.

* The fused second-order kernel against its einsum reference at ViT-B-32 shapes (MLP layer 9: 2 later layers
  x 12 heads, 3072 neurons, 50 tokens, 512-d embedding).
* Second-order effects of a whole MLP layer of a random-weight ViT-B-32 (factorized: capture + kernel, the
  directions built once per model) against the direct definition, which materializes every neuron's write
  at every token in width space (the original code's ``[b, tokens, neurons, width]`` tensors).
* Batched orthogonal matching pursuit (Batch-OMP with the automatic Gram cache, and without the Gram form)
  against scikit-learn's ``orthogonal_mp`` (no Gram precomputation: its fastest setting at 30,000 atoms, where
  the Gram matrix alone is 7.2 GB in float64) at 512 directions x 30,000 texts x 768 dims x 128 non-zeros.
  scikit-learn takes minutes there, so in the full run it is timed by one call over all 512 directions (no
  warm-up, no repeat). One direction at a time (20,000 texts x 64 non-zeros): a new direction per call and
  the dictionary's Gram matrix precomputed once (its build time in the metrics), as when every neuron of
  several layers is decomposed against one text bank.
* FAISS :class:`~vision_kernels.clip.HeadIndex` build (flat and IVF) and query, on one million synthesized
  512-d per-head contributions (quick: 20,000): at full size the build times are per million vectors (the
  IVF build, minutes under load, is timed by one call); quick runs report them per million in the metrics.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from vision_kernels.bench.harness import Contenders, case


@functools.lru_cache(maxsize=1)
def _model() -> Any:  # an open_clip CLIP model (open_clip ships no type information)
    import logging

    import open_clip

    logging.getLogger().setLevel(logging.ERROR)  # random weights on purpose
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32").eval()


@case("second_order", "second_order_effects op, ViT-B-32 layer 9 shapes, batch 32 x 3072 neurons (quick: 4 x 512)")
def op_b32(quick: bool) -> Contenders:
    from vision_kernels.ops import second_order_effects
    from vision_kernels.reference.second_order import second_order_effects as reference

    b, nl, h, n, nn, e = (4, 12, 12, 50, 512, 512) if quick else (32, 12, 12, 50, 3072, 512)
    layers = [10, 11]
    generator = torch.Generator().manual_seed(0)
    attn = torch.softmax(torch.randn(b, nl, h, n, generator=generator), -1)  # [B, L, H, N]
    ln_std = torch.rand(b, nl, n, generator=generator) + 0.5  # [B, L, N]
    act = torch.randn(b, n, nn, generator=generator)  # [B, N, Nn]
    directions = torch.randn(nn, 2, h, e, generator=generator).permute(1, 2, 0, 3) / 64  # [S, H, Nn, E], neuron-major
    scale = torch.rand(b, generator=generator) + 0.5
    pairs = len(layers) * h
    return Contenders(
        ours=lambda: second_order_effects(attn, ln_std, act, directions, scale, None, layers, check_finite=False),
        reference=lambda: reference(attn, ln_std, act, directions, scale, None, layers),
        flops=2.0 * b * pairs * nn * (e + n),
    )


@case(
    "second_order",
    "neuron_effects ViT-B-32 224px, MLP layer 9, all 3072 neurons, batch 2, vs the direct definition "
    "(quick: 1 image, 64 neurons)",
    repeats=2,
)
def effects_b32(quick: bool) -> Contenders:
    import vision_kernels.clip as vc
    from vision_kernels.reference.second_order import direct_second_order_effects

    model = _model()
    images = torch.randn(1 if quick else 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    neurons = list(range(64)) if quick else None
    start = time.perf_counter()
    directions = vc.neuron_directions(model, 9, neurons)  # image independent: built once per model and layer
    build_ms = (time.perf_counter() - start) * 1e3
    ours = vc.neuron_effects(model, images, 9, neurons, directions=directions)
    want = direct_second_order_effects(model, images, 9, neurons)
    error = float((ours.double() - want.double()).abs().max() / want.double().abs().max())

    def encode_image() -> torch.Tensor:
        with torch.no_grad():
            return model.encode_image(images)

    return Contenders(
        ours=lambda: vc.neuron_effects(model, images, 9, neurons, directions=directions),
        reference=lambda: direct_second_order_effects(model, images, 9, neurons),
        anchors={"open_clip encode_image": encode_image},
        metrics={"max_rel_err_vs_direct": error, "directions_build_ms_once": build_ms, "images": images.shape[0]},
        single_run=() if quick else ("reference",),  # the direct definition: about a minute per call at full size
    )


def _omp_problem(directions: int, texts: int, embed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit 'text embeddings' with a shared component and unit directions (CLIP-like coherence)."""
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(texts, embed, generator=generator) + 0.5 * torch.randn(1, embed, generator=generator)
    bank = torch.nn.functional.normalize(bank - bank.mean(0), dim=1)
    signals = torch.nn.functional.normalize(torch.randn(directions, embed, generator=generator), dim=1)
    return signals, bank


def _sklearn_omp(bank: torch.Tensor, signals: torch.Tensor, nonzero: int) -> Any:
    """scikit-learn's ``orthogonal_mp`` without the Gram matrix: its best setting here (the Gram matrix costs
    ``M^2 E``, more than a whole pursuit of one signal, and 7.2 GB in float64 at 30,000 atoms)."""
    import warnings

    from sklearn.linear_model import orthogonal_mp

    x, y = bank.double().T.numpy(), signals.double().T.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return orthogonal_mp(x, y, n_nonzero_coefs=nonzero, precompute=False)


def _omp_parity(signals: torch.Tensor, bank: torch.Tensor, nonzero: int, **options: Any) -> dict[str, float | str]:
    import numpy as np

    from vision_kernels.clip import orthogonal_matching_pursuit

    want = np.atleast_2d(_sklearn_omp(bank, signals, nonzero).T)  # [P, M]
    got = orthogonal_matching_pursuit(signals, bank, nonzero, progress=False, **options).dense().double().numpy()
    return {
        "same_support_fraction": float(((got != 0) == (want != 0)).all(axis=1).mean()),
        "max_coef_diff": float(np.abs(got - want).max()),
        "checked_directions": signals.shape[0],
    }


@case(
    "second_order",
    "orthogonal_matching_pursuit 512 directions x 30,000 texts x 768 dims x 128 non-zeros vs scikit-learn "
    "(quick: 32 x 2,000 x 768 x 16)",
    repeats=2,
)
def omp_vs_sklearn(quick: bool) -> Contenders:
    from vision_kernels.clip import orthogonal_matching_pursuit

    count, texts, nonzero = (32, 2_000, 16) if quick else (512, 30_000, 128)
    signals, bank = _omp_problem(count, texts, 768)
    sklearn_name = f"scikit-learn orthogonal_mp ({count} directions{'' if quick else ', one run'})"
    return Contenders(
        ours=lambda: orthogonal_matching_pursuit(signals, bank, nonzero, progress=False),
        anchors={
            "ours without the Gram form (gram=False)": lambda: orthogonal_matching_pursuit(
                signals, bank, nonzero, progress=False, gram=False
            ),
            sklearn_name: lambda: _sklearn_omp(bank, signals, nonzero),
        },
        single_run=() if quick else (sklearn_name,),  # minutes per call at full size
        flops=2.0 * count * texts * 768 * nonzero,
        metrics=_omp_parity(signals[: 8 if quick else 16], bank, nonzero),
    )


@case(
    "second_order",
    "orthogonal_matching_pursuit 1 direction x 20,000 texts x 768 dims x 64 non-zeros, a new direction per call, "
    "with the dictionary's DictionaryGram kept across calls, vs scikit-learn (quick: 5,000 texts)",
)
def omp_one_signal(quick: bool) -> Contenders:
    from vision_kernels.clip import DictionaryGram, orthogonal_matching_pursuit

    texts, nonzero, calls = (5_000, 64, 16) if quick else (20_000, 64, 16)
    signals, bank = _omp_problem(calls, texts, 768)
    start = time.perf_counter()
    gram = DictionaryGram(bank, max_bytes=texts * texts * 4).precompute()  # once per dictionary (all layers)
    build_s = time.perf_counter() - start
    turn = iter(range(10**9))

    def pursuit(option: Any) -> Any:  # a new direction each call: nothing is reused but the Gram matrix
        row = next(turn) % calls
        return orthogonal_matching_pursuit(signals[row : row + 1], bank, nonzero, progress=False, gram=option)

    metrics = _omp_parity(signals[:4], bank, nonzero, gram=gram)
    metrics["gram_build_s_once"] = build_s
    metrics["gram_mib"] = gram.nbytes / 2**20
    return Contenders(
        ours=lambda: pursuit(gram),
        anchors={
            "ours without the Gram form (gram=False)": lambda: pursuit(False),
            "scikit-learn orthogonal_mp (1 direction)": lambda: _sklearn_omp(bank, signals[:1], nonzero),
        },
        flops=2.0 * texts * 768 * nonzero,  # the direct form's work: the fraction shows what the Gram form saves
        metrics=metrics,
    )


def _contributions(count: int, embed: int = 512) -> torch.Tensor:
    """Synthesized per-head contributions: 1,000 clusters (image themes) plus noise, a shared mean."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(1000, embed, generator=generator)
    vectors = torch.empty(count, embed)
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        labels = torch.randint(0, 1000, (stop - start,), generator=generator)
        vectors[start:stop] = centres[labels] + 0.7 * torch.randn(stop - start, embed, generator=generator) + 0.5
    return vectors


def _identity():
    from vision_kernels.clip import ModelIdentity

    return ModelIdentity("synthetic per-head contributions", "0" * 64)


@case("second_order", "HeadIndex flat build, 1,000,000 x 512 contributions (quick: 20,000)", repeats=2)
def index_flat_build(quick: bool) -> Contenders:
    import faiss
    import numpy as np

    from vision_kernels.clip import HeadIndex

    count = 20_000 if quick else 1_000_000
    vectors = _contributions(count)
    prepared = np.ascontiguousarray(torch.nn.functional.normalize(vectors - vectors.mean(0), dim=1).numpy())

    def raw() -> object:
        index = faiss.IndexFlatIP(512)
        index.add(prepared)
        return index

    start = time.perf_counter()
    HeadIndex.from_contributions({"L11H0": vectors}, _identity(), kind="flat", progress=False)
    per_million = (time.perf_counter() - start) * 1e6 / count
    return Contenders(
        ours=lambda: HeadIndex.from_contributions({"L11H0": vectors}, _identity(), kind="flat", progress=False),
        anchors={"faiss IndexFlatIP.add of prepared vectors": raw},
        bytes_moved=2.0 * vectors.numel() * 4,
        metrics={"vectors": count, "build_s_per_million_once": per_million},
    )


@case("second_order", "HeadIndex IVF build (nlist 1024), 1,000,000 x 512 contributions (quick: 20,000, nlist 64)",
      repeats=2)  # fmt: skip
def index_ivf_build(quick: bool) -> Contenders:
    from vision_kernels.clip import HeadIndex

    count, nlist = (20_000, 64) if quick else (1_000_000, 1024)
    vectors = _contributions(count)
    sample = 39 * nlist

    def build() -> HeadIndex:
        return HeadIndex.from_contributions({"L11H0": vectors}, _identity(), kind="ivf", nlist=nlist,
                                            sample_size=sample, progress=False)  # fmt: skip

    metrics: dict[str, float | str] = {"vectors": count, "nlist": nlist, "training_sample": sample}
    if quick:  # at full size the timed call is one build of the million vectors: no extra run
        start = time.perf_counter()
        build()
        metrics["build_s_per_million_once"] = (time.perf_counter() - start) * 1e6 / count
    return Contenders(ours=build, metrics=metrics, single_run=() if quick else ("ours",))


@case("second_order", "HeadIndex query, 1,000 queries k=10 over 1,000,000 x 512 (quick: 20,000): flat vs IVF",
      repeats=2)  # fmt: skip
def index_query(quick: bool) -> Contenders:
    from vision_kernels.clip import HeadIndex

    count, nlist = (20_000, 64) if quick else (1_000_000, 1024)
    vectors = _contributions(count)
    flat = HeadIndex.from_contributions({"L11H0": vectors}, _identity(), kind="flat", progress=False)
    ivf = HeadIndex.from_contributions({"L11H0": vectors}, _identity(), kind="ivf", nlist=nlist, nprobe=16,
                                       sample_size=39 * nlist, progress=False)  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    queries = vectors[torch.randint(0, count, (1000,), generator=generator)] + 0.3 * torch.randn(1000, 512)
    exact = flat.search_contributions("L11H0", queries, k=10).indices
    approximate = ivf.search_contributions("L11H0", queries, k=10).indices
    recall = float(
        sum(len(set(a) & set(b)) for a, b in zip(exact.tolist(), approximate.tolist(), strict=True)) / exact.numel()
    )
    keys = torch.nn.functional.normalize(vectors - vectors.mean(0), dim=1)
    mean = vectors.mean(0)

    def brute_force() -> torch.Tensor:
        return (torch.nn.functional.normalize(queries - mean, dim=1) @ keys.T).topk(10, dim=1).indices

    return Contenders(
        ours=lambda: flat.search_contributions("L11H0", queries, k=10),
        reference=brute_force,
        anchors={"HeadIndex IVF (nprobe 16)": lambda: ivf.search_contributions("L11H0", queries, k=10)},
        flops=2.0 * 1000 * count * 512,
        metrics={"vectors": count, "ivf_recall_at_10": recall, "nlist": nlist},
        single_run=() if quick else ("reference",),  # the same exhaustive product as ours, timed once
    )
