"""Fixtures of the second_order (CLIP neurons) tests; the random-weight CLIP models are in ../conftest.py."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def layerscale_vit(make_tiny_vit):
    """A 4-layer tiny ViT with LayerScale on both branches (ls_1, ls_2), perturbed."""
    return make_tiny_vit(layers=4, ls_init_value=0.5)


@pytest.fixture(scope="session")
def hf_vision(perturbed):
    """A tiny transformers CLIPVisionModelWithProjection (random weights, perturbed)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    sizes = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, projection_dim=16)
    config = CLIPVisionConfig(image_size=32, patch_size=8, **sizes)
    return perturbed(CLIPVisionModelWithProjection(config)).eval()


def _images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` in float64."""
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-300))


@pytest.fixture(scope="session")
def make_images():
    """``make_images(count, size=32, seed=0)``: reproducible random images ``[count, 3, size, size]``."""
    return _images


@pytest.fixture(scope="session")
def rel():
    """``rel(got, want)``: max absolute error over max magnitude."""
    return _relative_error
