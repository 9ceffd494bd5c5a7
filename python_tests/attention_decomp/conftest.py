"""Shared fixtures of the CLIP tests: random-weight models (no downloads) and helpers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max over images of ``|got - want| / |want|`` (row norms, float64)."""
    got, want = got.double(), want.double()
    return float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())


def perturb(module: nn.Module, std: float = 0.1, seed: int = 0) -> nn.Module:
    """Add noise to every parameter so that LayerNorm gains/biases, LayerScale etc. are not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def tiny_vit(**options: object) -> nn.Module:
    """A small open_clip VisionTransformer (32 px, 8 px patches, width 64, 2 layers, 4 heads), perturbed."""
    from open_clip.transformer import VisionTransformer

    config = {
        "image_size": 32,
        "patch_size": 8,
        "width": 64,
        "layers": 2,
        "heads": 4,
        "mlp_ratio": 2.0,
        "output_dim": 24,
    }
    config.update(options)
    torch.manual_seed(0)
    return perturb(VisionTransformer(**config)).eval()


@pytest.fixture(scope="session")
def open_clip_model():
    """Factory of random-weight open_clip models by name, built once per session."""
    import open_clip

    logging.getLogger().setLevel(logging.ERROR)  # "No pretrained weights loaded" is expected
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = open_clip.create_model(name).eval()
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_clip():
    """A small open_clip CLIP with both towers (fast text encoding)."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=16, image_size=32, patch_size=8, mlp_ratio=2.0),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return perturb(model).eval()


@pytest.fixture(scope="session")
def rel_err():
    return relative_error


@pytest.fixture(scope="session")
def make_tiny_vit():
    return tiny_vit


@pytest.fixture(scope="session")
def perturbed():
    return perturb
