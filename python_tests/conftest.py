"""Shared pytest configuration: seeds, hypothesis profile, emulation availability, and the random-weight
CLIP models (no downloads) that the attention_decomp and second_order tests share."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

import vision_kernels

settings.register_profile(
    "vision_kernels",
    deadline=None,
    max_examples=int(os.environ.get("VK_HYPOTHESIS_EXAMPLES", "25")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("vision_kernels")
vision_kernels.set_progress(False)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = vision_kernels.build_info()
    return [
        f"vision_kernels {info['version']}: cuda_compiled={info['cuda_compiled']} "
        f"archs={info['cuda_architectures']} emulation={info['emulation_available']} "
        f"gpu={info['gpu_available']} threads={info['num_threads']}"
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``emulation`` run CUDA kernels through vision_kernels._C_emu, or on the device named by
    VK_KERNEL_DEVICE (vision_kernels.testing; the tests of the harness itself are skipped then)."""
    from vision_kernels import testing

    device = testing.kernel_device()
    if device != "emulation":
        reason = testing.kernel_device_unavailable(device)
        for item in items:
            if "emulation" in item.keywords and (reason or item.path.name == "test_emulation_harness.py"):
                item.add_marker(pytest.mark.skip(reason=reason or "tests the host emulation harness, not a kernel"))
        return
    if vision_kernels.build_info()["emulation_available"]:
        return
    skip = pytest.mark.skip(reason="vision_kernels._C_emu was not built (no CUDA toolkit headers at build time)")
    for item in items:
        if "emulation" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- random-weight CLIP models


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
