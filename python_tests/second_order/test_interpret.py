"""CLIP-InterpreT's five analyses against direct computations on the decomposition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import vision_kernels.clip as vc
from vision_kernels.clip.textspan import TextSpanResult


@pytest.fixture(scope="module")
def setup(make_tiny_vit, make_images):
    model = make_tiny_vit(layers=3)
    images = make_images(12, seed=31)
    index = vc.HeadIndex.build(model, images, layers=[1, 2], groups={"colors": [(2, 1), (1, 3)]})
    return model, images, index


def test_neighbour_searches_are_the_index_searches(setup, make_images) -> None:
    model, images, index = setup
    queries = make_images(2, seed=32)
    texts = torch.randn(3, 24)
    by_property = vc.property_neighbors(index, model, queries, "colors", k=3)
    assert torch.equal(by_property.indices, index.search_images(model, queries, "colors", k=3).indices)
    by_image = vc.image_neighbors(index, model, queries, 2, 1, k=3)
    assert torch.equal(by_image.indices, index.search_images(model, queries, "L2H1", k=3).indices)
    by_text = vc.text_neighbors(index, texts, 1, 0, k=3)
    assert torch.equal(by_text.indices, index.search_directions("L1H0", texts, k=3).indices)
    assert by_image.scores.shape == (2, 3) and by_text.scores.shape == (3, 3)
    # A property search compares the summed contributions of the group's heads.
    heads = vc.decompose(model, torch.cat([images, queries]), layers=[1, 2], normalize=True).heads
    summed = heads[:, 1, 1] + heads[:, 0, 3]
    keys = F.normalize(summed[:12] - summed[:12].mean(0), dim=1)
    want = (F.normalize(summed[12:] - summed[:12].mean(0), dim=1) @ keys.T).topk(3, dim=1).indices
    assert torch.equal(by_property.indices, want)


def test_head_topic_segmentation(setup, make_images) -> None:
    model, _, _ = setup
    images = make_images(2, seed=33)
    topics = torch.randn(3, 24)
    result = vc.head_topic_segmentation(model, images, -1, 2, topics, contrast="mean")
    tokens = vc.decompose(model, images, layers=[2], per_token=True).heads[:, 0, 2, 1:]  # [B, P, E] patches of head 2
    grid = (tokens @ (topics - topics.mean(0)).T).transpose(1, 2).reshape(2, 3, 4, 4)
    want = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(result.heatmaps, want, rtol=1e-4, atol=1e-6)
    assert torch.equal(result.labels, want.argmax(1))
    small = vc.head_topic_segmentation(model, images, 2, 2, topics, upsample=False)
    torch.testing.assert_close(small.heatmaps, (tokens @ topics.T).transpose(1, 2).reshape(2, 3, 4, 4))


def test_contrastive_segmentation(setup, make_images) -> None:
    model, _, _ = setup
    images = make_images(2, seed=34)
    a, b = torch.randn(24), torch.randn(24)
    result = vc.contrastive_segmentation(model, images, a, b)
    want = vc.text_heatmaps(model, images, a, contrast=b)[:, 0]
    torch.testing.assert_close(result.heatmaps, want)
    assert torch.equal(result.masks, want > 0)
    swapped = vc.contrastive_segmentation(model, images, b, a)
    torch.testing.assert_close(swapped.heatmaps, -result.heatmaps)
    chosen = vc.contrastive_segmentation(model, images, a, b, heads=[(-1, 0), (1, 2)], upsample=False)
    tokens = vc.decompose(model, images, layers=[1, 2], per_token=True).heads
    patches = tokens[:, 1, 0, 1:] + tokens[:, 0, 2, 1:]  # [B, P, E]
    torch.testing.assert_close(chosen.heatmaps, (patches @ (a - b)).reshape(2, 4, 4), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"argument 'text_b' must be one text embedding \[E\], got \[2, 24\]"):
        vc.contrastive_segmentation(model, images, a, torch.randn(2, 24))


def test_property_heads_from_text_spans() -> None:
    color = F.normalize(torch.randn(16), dim=0)

    def span(basis: torch.Tensor) -> TextSpanResult:
        return TextSpanResult([0] * len(basis), None, torch.ones(len(basis)), basis, torch.zeros(16),
                              torch.ones(len(basis)), "covariance", 8)  # fmt: skip

    noise = torch.randn(3, 16)
    spans = {
        (10, 1): span(torch.stack([noise[0], 0.5 * color + 0.1 * noise[1]])),  # a color text second
        (11, 4): span(torch.stack([-2 * color])),  # anti-aligned counts: |cos|
        (9, 0): span(noise[2:]),
        (8, 2): span(torch.zeros(0, 16)),  # no text chosen
    }
    ranked = vc.property_heads(spans, color, top=2)
    assert ranked == [(11, 4), (10, 1)]
    both = vc.property_heads(spans, torch.stack([color, noise[2]]), top=4)  # the best description per head counts
    assert set(both[:2]) == {(11, 4), (9, 0)} and both[2:] == [(10, 1), (8, 2)]
    with pytest.raises(ValueError, match=r"argument 'property_embeddings' must have size 16"):
        vc.property_heads(spans, torch.randn(5))
    with pytest.raises(ValueError, match=r"argument 'spans' must hold at least one head"):
        vc.property_heads({}, color)
