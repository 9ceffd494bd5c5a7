"""Heatmaps, zero-shot segmentation, its metrics (checked against sklearn and hand counts) and the
overlay figure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vision_kernels.clip as vc


def test_heatmaps_project_patch_terms_on_texts(make_tiny_vit) -> None:
    tower = make_tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    decomposition = vc.decompose(tower, images, per_token=True)
    texts = F.normalize(torch.randn(3, 24), dim=-1)
    maps = vc.heatmaps(decomposition, texts)  # grid resolution
    assert maps.shape == (2, 3, 4, 4)
    tokens = decomposition.heads.sum(dim=(1, 2))  # [B, N, E]
    want = (tokens[:, 1:] @ texts.T).transpose(1, 2).reshape(2, 3, 4, 4)
    torch.testing.assert_close(maps, want)
    contrast = vc.heatmaps(decomposition, texts[0], contrast=texts[1])
    torch.testing.assert_close(contrast[:, 0], want[:, 0] - want[:, 1], rtol=1e-5, atol=1e-6)
    mean = vc.heatmaps(decomposition, texts, contrast="mean")
    torch.testing.assert_close(mean, want - want.mean(1, keepdim=True), rtol=1e-5, atol=1e-6)
    upsampled = vc.heatmaps(decomposition, texts, image_size=(32, 32))
    assert upsampled.shape == (2, 3, 32, 32)
    torch.testing.assert_close(upsampled, F.interpolate(want, size=(32, 32), mode="bilinear", align_corners=False))


def test_text_heatmaps_sum_only_the_chosen_layers(make_tiny_vit) -> None:
    tower = make_tiny_vit(layers=3)
    images = torch.randn(2, 3, 32, 32)
    texts = F.normalize(torch.randn(2, 24), dim=-1)
    full = vc.decompose(tower, images, per_token=True)
    only_last = replace(full, heads=full.heads[:, 1:], layers=full.layers[1:])
    got = vc.text_heatmaps(tower, images, texts, layers=[1, 2])
    torch.testing.assert_close(got, vc.heatmaps(only_last, texts, image_size=(32, 32)), rtol=1e-5, atol=1e-6)
    assert vc.text_heatmaps(tower, images, texts, upsample=False).shape == (2, 2, 4, 4)


def test_heatmap_localizes_a_planted_direction() -> None:
    # Token contributions point along the text only in the top-left 2 x 2 patches.
    embed, grid = 8, (4, 4)
    text = F.normalize(torch.randn(embed), dim=0)
    tokens = 0.01 * torch.randn(1, 17, embed)
    for patch in (0, 1, 4, 5):
        tokens[0, 1 + patch] += text
    decomposition = vc.Decomposition(
        heads=tokens, head_axes=("image", "token", "dim"), layers=(0,), other_heads=torch.zeros(1, embed),
        mlps=torch.zeros(1, 1, embed), embedding=torch.zeros(1, embed), bias=torch.zeros(1, embed),
        output=torch.zeros(1, embed), convention="per_term", normalized=False, grid=grid,
    )  # fmt: skip
    maps = vc.heatmaps(decomposition, text, image_size=(16, 16))[:, 0]
    masks, scores = vc.segment(maps)
    truth = torch.zeros(1, 16, 16, dtype=torch.bool)
    truth[0, :8, :8] = True
    assert scores.min() == 0 and scores.max() == 1
    result = vc.segmentation_scores(maps, truth)
    assert result["pixel_accuracy"] > 0.9 and result["miou"] > 0.8 and result["map"] > 0.95


def test_average_precision_matches_sklearn() -> None:
    from sklearn.metrics import average_precision_score

    generator = np.random.default_rng(0)
    for _ in range(20):
        targets = generator.random(300) < 0.3
        scores = np.round(generator.random(300) + 0.5 * targets, 1)  # ties included
        want = average_precision_score(targets, scores)
        got = vc.average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
        assert abs(got - want) < 1e-12
    assert vc.average_precision(torch.rand(10), torch.zeros(10)) == 0.0
    with pytest.raises(ValueError, match=r"arguments 'scores' and 'targets' must have as many elements"):
        vc.average_precision(torch.rand(3), torch.ones(4))


def test_segmentation_scores_by_hand() -> None:
    # Scores 0..15 on a 4 x 4 image: clipped at 0, normalized to [0, 1], threshold at the mean 0.5.
    heat = torch.arange(16.0).reshape(1, 4, 4) - 4.0  # negative values are clipped to 0
    masks, scores = vc.segment(heat)
    clipped = heat.clamp_min(0)
    torch.testing.assert_close(scores, clipped / clipped.max())
    assert torch.equal(masks, scores > scores.mean())
    truth = torch.zeros(1, 4, 4, dtype=torch.bool)
    truth[0, 2:] = True  # bottom half
    result = vc.segmentation_scores(heat, truth)
    predicted = masks[0]
    correct = int((predicted == truth[0]).sum())
    assert result["pixel_accuracy"] == correct / 16
    fg = int((predicted & truth[0]).sum()) / int((predicted | truth[0]).sum())
    bg = int((~predicted & ~truth[0]).sum()) / int((~predicted | ~truth[0]).sum())
    assert result["iou_foreground"] == pytest.approx(fg) and result["iou_background"] == pytest.approx(bg)
    assert result["miou"] == pytest.approx((fg + bg) / 2)
    from sklearn.metrics import average_precision_score

    stacked = torch.stack([1 - scores[0], scores[0]]).flatten().numpy()
    labels = torch.stack([~truth[0], truth[0]]).flatten().numpy()
    assert result["map"] == pytest.approx(average_precision_score(labels, stacked))


def test_spatial_bad_input(make_tiny_vit) -> None:
    summed = vc.decompose(make_tiny_vit(), torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"the decomposition has no token axis; decompose with per_token=True"):
        vc.heatmaps(summed, torch.randn(24))
    per_token = vc.decompose(make_tiny_vit(), torch.randn(1, 3, 32, 32), per_token=True)
    with pytest.raises(ValueError, match=r"argument 'text_embeddings' must have size 24 in its last dimension"):
        vc.heatmaps(per_token, torch.randn(2, 25))
    with pytest.raises(ValueError, match=r"argument 'text_embeddings' must be \[E\] or a non-empty \[T, E\]"):
        vc.heatmaps(per_token, torch.randn(0, 24))
    with pytest.raises(ValueError, match=r"argument 'contrast' must be None, 'mean' or a text embedding"):
        vc.heatmaps(per_token, torch.randn(2, 24), contrast="median")
    with pytest.raises(ValueError, match=r"arguments 'heatmaps' and 'masks' must both be \[B, H, W\]"):
        vc.segmentation_scores(torch.rand(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"argument 'heatmaps' must be \[B, H, W\]"):
        vc.segment(torch.rand(4, 4))


def test_overlay_figure(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 16, 16)
    maps = torch.randn(2, 3, 16, 16)
    path = vc.overlay_figure(images, maps, tmp_path / "figure.png", titles=["a", "b", "c"],
                             masks=torch.rand(2, 16, 16) > 0.5, row_titles=["x", "y"])  # fmt: skip
    assert path.exists() and path.stat().st_size > 1000
    import matplotlib.image

    assert matplotlib.image.imread(path).ndim == 3
    single = vc.overlay_figure([np.random.rand(16, 16, 3)], torch.randn(1, 16, 16), tmp_path / "single.png")
    assert single.exists()
    with pytest.raises(ValueError, match=r"argument 'images' must hold 2 images \(one per map\), got 1"):
        vc.overlay_figure(images[:1], maps, tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"argument 'titles' must hold 3 titles"):
        vc.overlay_figure(images, maps, tmp_path / "bad.png", titles=["a"])
