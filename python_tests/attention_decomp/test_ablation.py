"""Mean-ablation of heads, attention layers, MLPs and the embedding term; zero-shot classifiers and accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vision_kernels.clip as vc


@pytest.fixture
def decomposed(make_tiny_vit):
    tower = make_tiny_vit(layers=3)
    images, reference_images = torch.randn(6, 3, 32, 32), torch.randn(10, 3, 32, 32)
    return vc.decompose(tower, images), vc.decompose(tower, reference_images)


def test_mean_ablation_replaces_terms_by_their_reference_mean(decomposed) -> None:
    target, reference = decomposed
    got = vc.mean_ablate(target, reference, heads=[(0, 1), (2, 3)], layers=[1], mlps=[0, 2], embedding=True)
    want = target.output.clone()
    for layer, head in [(0, 1), (2, 3)]:
        want += reference.heads[:, layer, head].mean(0) - target.heads[:, layer, head]
    want += reference.heads[:, 1].sum(1).mean(0) - target.heads[:, 1].sum(1)
    for layer in (0, 2):
        want += reference.mlps[:, layer].mean(0) - target.mlps[:, layer]
    want += reference.embedding.mean(0) - target.embedding
    torch.testing.assert_close(got, want)
    # A head inside an ablated layer is not counted twice.
    torch.testing.assert_close(vc.mean_ablate(target, reference, heads=[(1, 0)], layers=[1]),
                               vc.mean_ablate(target, reference, layers=[1]))  # fmt: skip


def test_ablating_nothing_or_everything(decomposed) -> None:
    target, reference = decomposed
    torch.testing.assert_close(vc.mean_ablate(target, reference), target.output)
    # Everything that varies ablated, reference = the images themselves: every image gets the mean
    # of the varying terms plus its own bias term.
    everything = vc.mean_ablate(target, layers=[0, 1, 2], mlps="all", embedding=True)
    varying = target.heads.sum(dim=(1, 2)) + target.mlps.sum(1) + target.embedding
    torch.testing.assert_close(everything, varying.mean(0) + target.bias + target.other_heads, rtol=1e-5, atol=1e-5)


def test_ablation_without_head_axis(make_tiny_vit) -> None:
    tower = make_tiny_vit()
    decomposition = vc.decompose(tower, torch.randn(4, 3, 32, 32), per_head=False)
    got = vc.mean_ablate(decomposition, layers=[1])
    want = decomposition.output + decomposition.heads[:, 1].mean(0) - decomposition.heads[:, 1]
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"summed over heads; decompose with per_head=True"):
        vc.mean_ablate(decomposition, heads=[(0, 0)])
    per_token = vc.decompose(tower, torch.randn(4, 3, 32, 32), per_token=True)
    summed = vc.decompose(tower, torch.randn(4, 3, 32, 32))
    assert vc.mean_ablate(per_token, heads=[(1, 2)]).shape == (4, 24)
    with pytest.raises(ValueError, match=r"argument 'reference' must be decomposed like 'decomposition'"):
        vc.mean_ablate(per_token, summed, heads=[(1, 2)])


def test_ablation_bad_indices(decomposed, make_tiny_vit) -> None:
    target, reference = decomposed
    with pytest.raises(IndexError, match=r"argument 'heads' has head 4 out of range \[0, 4\)"):
        vc.mean_ablate(target, reference, heads=[(0, 4)])
    with pytest.raises(IndexError, match=r"argument 'mlps' has layer 3 out of range \[0, 3\)"):
        vc.mean_ablate(target, reference, mlps=[3])
    subset = vc.decompose(make_tiny_vit(layers=3), torch.randn(2, 3, 32, 32), layers=[2])
    with pytest.raises(IndexError, match=r"layer 0 was not decomposed; layers: \[2\]"):
        vc.mean_ablate(subset, heads=[(0, 1)])


def test_zero_shot_accuracy_known_answers() -> None:
    classifier = torch.eye(3)  # [E, C]
    embeddings = torch.tensor([[1.0, 0.2, 0.0], [0.1, 0.0, 0.9], [0.3, 0.4, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 2, 0, 1])
    assert vc.zero_shot_accuracy(embeddings, classifier, labels) == 0.5
    assert vc.zero_shot_accuracy(embeddings, classifier, labels, topk=2) == 0.75
    with pytest.raises(ValueError, match=r"arguments 'embeddings' \[B, E\] and 'classifier' \[E, C\] must share E"):
        vc.zero_shot_accuracy(embeddings, torch.eye(4), labels)
    with pytest.raises(ValueError, match=r"argument 'labels' must have shape \[4\]"):
        vc.zero_shot_accuracy(embeddings, classifier, labels[:2])


def test_zero_shot_classifier_and_ablation_accuracy(tiny_clip) -> None:
    classifier = vc.zero_shot_classifier(tiny_clip, ["dog", "cat"], templates=("a photo of a {}.", "a {}."))
    assert classifier.shape == (32, 2)
    torch.testing.assert_close(classifier.norm(dim=0), torch.ones(2))
    prompts = vc.encode_texts(tiny_clip, ["a photo of a dog.", "a dog."])
    torch.testing.assert_close(classifier[:, 0], F.normalize(prompts.mean(0), dim=0))
    images = torch.randn(8, 3, 32, 32)
    decomposition = vc.decompose(tiny_clip, images)
    labels = (decomposition.output @ classifier).argmax(1)  # the model's own predictions: accuracy 1 before
    scores = vc.mean_ablation_accuracy(decomposition, classifier, labels, mlps="all", layers=[0, 1], embedding=True)
    assert scores["before"] == 1.0 and 0.0 <= scores["after"] <= 1.0
    with pytest.raises(ValueError, match=r"argument 'classnames' must not be empty"):
        vc.zero_shot_classifier(tiny_clip, [])
    with pytest.raises(ValueError, match=r"argument 'templates' must be non-empty prompts with"):
        vc.zero_shot_classifier(tiny_clip, ["dog"], templates=("a photo",))
