"""Neuron-based segmentation: neuron selection by principal direction, activation maps, per-class neurons from a
zero-shot classifier, the 0.5 threshold, scores, and the spatial helpers it relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vision_kernels.clip as vc


@pytest.fixture(scope="module")
def model_and_stats(make_tiny_vit, make_images):
    model = make_tiny_vit(layers=4)
    train = make_images(16, seed=11)
    stats = [vc.collect_neuron_statistics(model, train, layer, top_k=4, batch_size=8) for layer in (1, 2)]
    return model, stats


def test_select_neurons_ranks_by_alignment_with_the_text(model_and_stats) -> None:
    _, stats = model_and_stats
    text = torch.randn(24)
    chosen = vc.select_neurons(stats, text, top=5)  # [1, 5, 2]
    scores = torch.cat([(s.principal @ text).abs() for s in stats])  # layer 1's 128 neurons, then layer 2's
    best = scores.topk(5).indices
    want = torch.stack([torch.where(best < 128, 1, 2), best % 128], 1)
    assert torch.equal(chosen[0], want)
    signed = vc.select_neurons(stats, torch.stack([text, -text]), top=3, absolute=False)
    assert signed.shape == (2, 3, 2) and not torch.equal(signed[0], signed[1])


def test_neuron_heatmaps_are_mean_activations_of_the_patches(model_and_stats, make_images) -> None:
    model, _ = model_and_stats
    images = make_images(2, seed=12)
    pairs = torch.tensor([[1, 4], [2, 100], [1, 4]])
    maps = vc.neuron_heatmaps(model, images, pairs, image_size=(4, 4))  # the 4 x 4 patch grid itself
    cap = vc.capture(model, images, keep_neurons=True)
    want = (cap.neurons[:, 1, 1:, 4] * 2 + cap.neurons[:, 2, 1:, 100]) / 3  # [B, 16]
    torch.testing.assert_close(maps, want.reshape(2, 4, 4))
    upsampled = vc.neuron_heatmaps(model, images, pairs)
    torch.testing.assert_close(upsampled, F.interpolate(want.reshape(2, 1, 4, 4), size=(32, 32), mode="bilinear",
                                                        align_corners=False)[:, 0])  # fmt: skip
    per_image = vc.neuron_heatmaps(model, images, torch.stack([pairs[:1], pairs[1:2]]), image_size=(4, 4))
    torch.testing.assert_close(per_image[1], cap.neurons[1, 2, 1:, 100].reshape(4, 4))


def test_segmentation_with_one_text_and_with_a_classifier(model_and_stats, make_images) -> None:
    model, stats = model_and_stats
    images = make_images(3, seed=13)
    text = torch.randn(24)
    result = vc.neuron_segmentation(model, images, stats, text, top=6)
    assert result.heatmaps.shape == result.scores.shape == result.masks.shape == (3, 32, 32)
    torch.testing.assert_close(
        result.heatmaps, vc.neuron_heatmaps(model, images, vc.select_neurons(stats, text, top=6)[0])
    )
    torch.testing.assert_close(result.masks, result.scores > 0.5)
    assert float(result.scores.amin()) == 0.0 and float(result.scores.amax()) == 1.0
    classifier = torch.nn.functional.normalize(torch.randn(24, 5), dim=0)
    by_class = vc.neuron_segmentation(model, images, stats, classifier, top=6)
    predicted = (vc.capture(model, images).output @ classifier).argmax(1)
    assert torch.equal(by_class.classes, predicted)
    per_class = vc.select_neurons(stats, classifier.T, top=6)
    assert torch.equal(by_class.neurons, per_class[predicted])
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    scores = vc.segmentation_scores(by_class.heatmaps, masks, threshold=0.5, clip=False)
    predicted_masks = by_class.masks
    assert scores["pixel_accuracy"] == pytest.approx(float((predicted_masks == masks).float().mean()))


def test_segment_options_and_per_head_token_contributions(model_and_stats, make_images) -> None:
    heat = torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]])
    masks, scores = vc.segment(heat, threshold=0.5, clip=False)
    torch.testing.assert_close(scores, torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))
    assert masks.tolist() == [[[False, False], [False, True]]]
    masks, scores = vc.segment(heat)  # clipped at 0, threshold at the mean
    assert masks.tolist() == [[[False, False], [False, True]]] and float(scores[0, 1, 0]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"argument 'threshold' must be 'mean' or a number"):
        vc.segment(heat, threshold="median")
    model, _ = model_and_stats
    decomposition = vc.decompose(model, make_images(2), layers=[1, 3], per_token=True)
    one = vc.token_contributions(decomposition, heads=[(3, 2)])
    torch.testing.assert_close(one, decomposition.heads[:, 1, 2])
    two = vc.token_contributions(decomposition, heads=[(3, 2), (1, 0)])
    torch.testing.assert_close(two, decomposition.heads[:, 1, 2] + decomposition.heads[:, 0, 0])
    with pytest.raises(IndexError, match=r"layer 2 was not decomposed"):
        vc.token_contributions(decomposition, heads=[(2, 0)])
    with pytest.raises(IndexError, match=r"argument 'heads' has head 4 out of range \[0, 4\)"):
        vc.token_contributions(decomposition, heads=[(1, 4)])
    summed = vc.decompose(model, make_images(2), per_token=True, per_head=False)
    with pytest.raises(ValueError, match=r"selecting heads needs a decomposition with per_layer=True and per_head"):
        vc.token_contributions(summed, heads=[(1, 0)])


def test_bad_input(model_and_stats, make_images) -> None:
    model, stats = model_and_stats
    images = make_images(1)
    with pytest.raises(ValueError, match=r"argument 'text_embeddings' must be \[E\] or \[T, E\] with E = 24"):
        vc.select_neurons(stats, torch.randn(7))
    with pytest.raises(ValueError, match=r"argument 'top' must be in \[1, 256\]"):
        vc.select_neurons(stats, torch.randn(24), top=257)
    anonymous = vc.neuron_statistics(torch.randn(5, 3, 24), top_k=2)
    with pytest.raises(ValueError, match=r"entry 0 does not record its layer and neurons"):
        vc.select_neurons(anonymous, torch.randn(24))
    with pytest.raises(IndexError, match=r"argument 'neurons' holds neuron indices outside \[0, 128\)"):
        vc.neuron_heatmaps(model, images, torch.tensor([[1, 128]]))
    with pytest.raises(IndexError, match=r"argument 'neurons' holds layer indices outside \[0, 4\)"):
        vc.neuron_heatmaps(model, images, torch.tensor([[4, 0]]))
    with pytest.raises(ValueError, match=r"argument 'neurons' must be \[K, 2\] or \[1, K, 2\]"):
        vc.neuron_heatmaps(model, images, torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"a class text \[E\] or a classifier \[E, C\]"):
        vc.neuron_segmentation(model, images, stats, torch.randn(2, 24, 3))
