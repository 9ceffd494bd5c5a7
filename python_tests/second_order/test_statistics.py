"""Neuron statistics (significance thresholds, principal directions with majority sign) against the original
algorithm written with numpy, streaming statistics from a model, and the paper's ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vision_kernels.clip as vc


def original_statistics(effects: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The original code's per-neuron loop: mean, PCA of the top-k centred effects with majority sign, top norms."""
    mean = effects.mean(axis=0)
    principal, norms = [], []
    for neuron in range(effects.shape[1]):
        centred = effects[:, neuron] - mean[neuron]
        lengths = np.linalg.norm(centred, axis=-1)
        important = centred[np.argsort(lengths)[-top_k:]]
        norms.append(np.sort(lengths)[-top_k:])
        _, _, vh = np.linalg.svd(important, full_matrices=False)
        positive = np.count_nonzero(important @ vh[0] > 0)
        principal.append(vh[0] if positive > top_k // 2 else -vh[0])
    return mean, np.stack(principal), np.stack(norms)


def synthetic_effects(images: int, neurons: int, embed: int, seed: int = 0) -> torch.Tensor:
    """Mostly small effects, a few large ones along a neuron-specific direction (as the paper finds)."""
    generator = torch.Generator().manual_seed(seed)
    effects = 0.05 * torch.randn(images, neurons, embed, generator=generator, dtype=torch.float64)
    directions = torch.nn.functional.normalize(torch.randn(neurons, embed, generator=generator, dtype=torch.float64))
    strength = torch.rand(images, neurons, generator=generator, dtype=torch.float64) ** 8 * 3
    return effects + strength[..., None] * directions


def test_statistics_match_the_original_algorithm() -> None:
    effects = synthetic_effects(60, 7, 16)
    stats = vc.neuron_statistics(effects, top_k=10)
    mean, principal, norms = original_statistics(effects.numpy(), 10)
    np.testing.assert_allclose(stats.mean.numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.principal.numpy(), principal, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.top_norms.numpy(), norms[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(stats.thresholds.numpy(), norms[:, 0], rtol=1e-6)
    centred = effects - effects.mean(0)
    want = centred.norm(dim=-1).T.gather(1, stats.top_images)  # the recorded images hold the top norms
    torch.testing.assert_close(want, stats.top_norms)
    assert stats.count == 60 and stats.top_k == 10
    assert ((stats.explained > 0) & (stats.explained <= 1)).all()


def test_majority_sign_flips_the_component() -> None:
    # Top effects: three along +d, two along -d: the direction is +d; negate them all: -d.
    d = torch.zeros(8, dtype=torch.float64)
    d[2] = 1.0
    scales = torch.tensor([3.0, 2.5, 2.0, -2.2, -2.1] + [0.01] * 15, dtype=torch.float64)
    effects = (scales[:, None] * d)[:, None, :] + 1e-4 * torch.randn(20, 1, 8, dtype=torch.float64)
    effects = effects - effects.mean(0)
    stats = vc.neuron_statistics(effects, top_k=5)
    assert float(stats.principal[0] @ d.float()) > 0.999
    flipped = vc.neuron_statistics(-effects, top_k=5)
    assert float(flipped.principal[0] @ d.float()) < -0.999
    _, principal, _ = original_statistics(effects.numpy(), 5)
    assert float(principal[0] @ d.numpy()) > 0.999


def test_constant_effects_have_no_direction() -> None:
    stats = vc.neuron_statistics(torch.ones(6, 2, 4), top_k=3)
    assert torch.equal(stats.principal, torch.zeros(2, 4)) and torch.equal(stats.explained, torch.zeros(2))


def test_chunking_does_not_change_the_result() -> None:
    effects = synthetic_effects(30, 9, 8, seed=3).float()
    whole = vc.neuron_statistics(effects, top_k=4)
    chunked = vc.neuron_statistics(effects, top_k=4, max_elements=30 * 8 * 2)  # two neurons per chunk
    for name in ("mean", "top_norms", "top_images", "principal", "explained"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name))


def test_memory_mapped_effects(tmp_path) -> None:
    effects = synthetic_effects(20, 5, 6, seed=4).float()
    path = tmp_path / "effects.bin"
    effects.numpy().tofile(path)
    mapped = torch.from_file(str(path), shared=False, size=effects.numel()).view(20, 5, 6)
    stats = vc.neuron_statistics(mapped, top_k=3)
    torch.testing.assert_close(stats.principal, vc.neuron_statistics(effects, top_k=3).principal)


def test_significance_fraction() -> None:
    effects = synthetic_effects(50, 6, 8, seed=5)
    stats = vc.neuron_statistics(effects, top_k=5)
    # On its own images, exactly k - 1 effects exceed the k-th largest norm (strictly).
    torch.testing.assert_close(stats.significant_fraction(effects), torch.full((6,), 4 / 50))
    other = synthetic_effects(40, 6, 8, seed=6)
    norms = (other.float() - stats.mean.float()).norm(dim=-1)  # [K, Nn]
    torch.testing.assert_close(stats.significant(other), norms > stats.thresholds)
    with pytest.raises(ValueError, match=r"argument 'effects' must be \[K, 6, 8\]"):
        stats.significant(other[:, :5])


def test_streaming_statistics_from_a_model_equal_the_stored_ones(make_tiny_vit, make_images) -> None:
    model = make_tiny_vit(layers=3)
    images = make_images(12, seed=7)
    stored = vc.neuron_statistics(vc.neuron_effects(model, images, 0, [1, 5, 9, 77]), top_k=4)
    streamed = vc.collect_neuron_statistics(model, images, 0, [1, 5, 9, 77], top_k=4, batch_size=5)
    for name in ("mean", "top_norms", "top_images", "principal"):
        torch.testing.assert_close(getattr(streamed, name), getattr(stored, name), rtol=1e-4, atol=1e-6)
    assert streamed.layer == 0 and streamed.neurons.tolist() == [1, 5, 9, 77] and streamed.count == 12
    loader = [(images[:7], torch.zeros(7)), (images[7:], torch.zeros(5))]  # a DataLoader-like re-iterable
    from_loader = vc.collect_neuron_statistics(model, loader, 0, [1, 5, 9, 77], top_k=4)
    torch.testing.assert_close(from_loader.principal, streamed.principal, rtol=1e-4, atol=1e-6)


def test_statistics_bad_input(make_tiny_vit, make_images) -> None:
    with pytest.raises(ValueError, match=r"argument 'top_k' must be in \[1, 6\] \(the number of images\), got 7"):
        vc.neuron_statistics(torch.randn(6, 2, 3), top_k=7)
    with pytest.raises(ValueError, match=r"neuron_statistics: argument 'effects' must be a \[K, Nn, E\] tensor"):
        vc.neuron_statistics(torch.randn(6, 3))
    model = make_tiny_vit(layers=2)
    with pytest.raises(TypeError, match=r"must be a tensor or a re-iterable of batches .* one-shot iterator"):
        vc.collect_neuron_statistics(model, iter([make_images(2)]), 0)
    with pytest.raises(ValueError, match=r"argument 'top_k' must be in \[1, 3\]"):
        vc.collect_neuron_statistics(model, make_images(3), 0, top_k=5)
    with pytest.raises(ValueError, match=r"argument 'images' holds no image"):
        vc.collect_neuron_statistics(model, [], 0)


def test_ablations() -> None:
    effects = synthetic_effects(30, 5, 6, seed=8).float()
    stats = vc.neuron_statistics(effects, top_k=4)
    embeddings = torch.randn(30, 6)
    centred = (effects - stats.mean).float()
    significant = stats.significant(effects)
    every = vc.ablate_neuron_effects(embeddings, effects, stats, mode="all")
    torch.testing.assert_close(every, embeddings - centred.sum(1))
    without_significant = vc.ablate_neuron_effects(embeddings, effects, stats, mode="significant")
    without_insignificant = vc.ablate_neuron_effects(embeddings, effects, stats, mode="insignificant")
    for b in range(30):
        kept_insignificant = centred[b][~significant[b]].sum(0)
        kept_significant = centred[b][significant[b]].sum(0)
        torch.testing.assert_close(without_significant[b], every[b] + kept_insignificant)
        torch.testing.assert_close(without_insignificant[b], every[b] + kept_significant)
    principal = vc.ablate_neuron_effects(embeddings, effects, stats, mode="principal")
    projections = (centred * stats.principal).sum(-1, keepdim=True) * stats.principal
    torch.testing.assert_close(principal, every + projections.sum(1))
    with pytest.raises(ValueError, match=r"argument 'mode' must be one of"):
        vc.ablate_neuron_effects(embeddings, effects, stats, mode="some")
    with pytest.raises(ValueError, match=r"argument 'embeddings' must be \[30, 6\]"):
        vc.ablate_neuron_effects(embeddings[:3], effects, stats)
