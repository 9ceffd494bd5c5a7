"""Fixtures of the CLIP-neuron tests: the random-weight models of the CLIP tests (no downloads), reused."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "vk_clip_test_models", Path(__file__).resolve().parents[1] / "clip" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
clip_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clip_models)

tiny_vit = clip_models.tiny_vit
perturb = clip_models.perturb
open_clip_model = clip_models.open_clip_model  # session fixture: random-weight open_clip models by name
tiny_clip = clip_models.tiny_clip  # session fixture: a small CLIP with both towers


@pytest.fixture(scope="session")
def layerscale_vit():
    """A 4-layer tiny ViT with LayerScale on both branches (ls_1, ls_2), perturbed."""
    return tiny_vit(layers=4, ls_init_value=0.5)


@pytest.fixture(scope="session")
def hf_vision():
    """A tiny transformers CLIPVisionModelWithProjection (random weights, perturbed)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
    )
    return perturb(CLIPVisionModelWithProjection(config)).eval()


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


@pytest.fixture(scope="session")
def make_tiny_vit():
    return tiny_vit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_ranks(command: list[str], world: int = 2, timeout: float = 600) -> None:
    """Run ``command`` as ``world`` gloo ranks on this machine (the environment torchrun would set)."""
    port = _free_port()
    processes = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), VK_PROGRESS="0", OMP_NUM_THREADS="1")  # fmt: skip
        processes.append(subprocess.Popen(command, env=env))
    try:
        codes = [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert codes == [0] * world


@pytest.fixture(scope="session")
def run_ranks():
    """``run_ranks(command, world=2)``: the command as ``world`` gloo ranks; asserts every rank exits 0."""
    return _run_ranks
