"""Fixtures of the weights2weights tests: tiny diffusers UNets, planted datasets, fine-tuned adapters.

Nothing is downloaded: UNets are built from tiny configs with random weights, "identities" are
small synthetic images, and the adapters of the end-to-end tests are really fine-tuned on them
(after a short pre-training of the base UNet on a family of such images, so that each adapter
learns what is specific to its image).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _quiet_diffusers() -> None:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny UNets run fastest (and steadiest on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_unet(seed: int = 0, **overrides: object) -> torch.nn.Module:
    from vision_kernels.weightspace import tiny_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tiny_unet(**overrides)


@pytest.fixture(scope="session")
def unet_factory() -> Callable[..., torch.nn.Module]:
    return make_unet


def layout_of_unet(rank: int = 2, alpha: float = 4.0, target_modules: tuple[str, ...] = ("to_q", "to_v")):
    """The LoRA layout of the tiny UNet (built by peft itself, then flattened)."""
    from peft import LoraConfig

    from vision_kernels.weightspace import LoraLayout

    unet = make_unet()
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules)), adapter_name="probe")
    tensors = {}
    for name, parameter in unet.named_parameters():
        if ".probe." in name:
            module, rest = name.split(".lora_", 1)
            tensors[(module, rest[0])] = parameter.detach()
    return LoraLayout.from_tensors(tensors, rank=rank, alpha=alpha)


@pytest.fixture(scope="session")
def layout_factory() -> Callable[..., object]:
    return layout_of_unet


@pytest.fixture(scope="session")
def tiny_layout():
    return layout_of_unet()


@dataclass
class Planted:
    """Weights ``X = mu + sigma * (C V^T + noise)`` with a planted rank-r structure."""

    weights: torch.Tensor  # [N, D]
    mean: torch.Tensor  # [D]
    sigma: torch.Tensor  # [D]
    directions: torch.Tensor  # [D, r] orthonormal (standardized units)
    coefficients: torch.Tensor  # [N, r]
    layout: object

    @property
    def planted_span(self) -> torch.Tensor:
        """The planted subspace in weight units (``sigma * V``)."""
        return self.sigma[:, None] * self.directions


def make_planted(layout, count: int = 80, rank: int = 5, noise: float = 0.1, seed: int = 1) -> Planted:
    generator = torch.Generator().manual_seed(seed)
    dims = layout.dim
    directions = torch.linalg.qr(torch.randn(dims, rank, generator=generator, dtype=torch.float64)).Q
    scales = torch.linspace(10, 3, rank, dtype=torch.float64)
    coefficients = torch.randn(count, rank, generator=generator, dtype=torch.float64) * scales
    mean = torch.randn(dims, generator=generator, dtype=torch.float64) * 0.01
    sigma = torch.rand(dims, generator=generator, dtype=torch.float64) * 0.02 + 0.005
    standardized = coefficients @ directions.T + noise * torch.randn(
        count, dims, generator=generator, dtype=torch.float64
    )
    weights = (mean + sigma * standardized).float()
    return Planted(weights, mean, sigma, directions, coefficients, layout)


@pytest.fixture(scope="session")
def planted(tiny_layout) -> Planted:
    return make_planted(tiny_layout)


@pytest.fixture(scope="session")
def planted_folder(tmp_path_factory, planted) -> Path:
    """The planted models as adapter folders, alternating peft and diffusers formats, w2w-style
    ``<model>/unet/`` for some."""
    from vision_kernels.weightspace import write_adapter

    root = tmp_path_factory.mktemp("planted_adapters")
    for index, vector in enumerate(planted.weights):
        if index % 3 == 0:
            write_adapter(root / f"model{index}" / "unet", vector, planted.layout, format="peft")
        elif index % 3 == 1:
            write_adapter(root / f"model{index}", vector, planted.layout, format="peft")
        else:
            write_adapter(root / f"model{index}", vector, planted.layout, format="diffusers")
    return root


# ---------------------------------------------------------------- fine-tuned identities


def identity_image(index: int, size: int = 8) -> torch.Tensor:
    """A synthetic "identity": a colored disc at some position on a contrasting background, in [-1, 1]."""
    generator = torch.Generator().manual_seed(100 + index)
    color = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    cx, cy = torch.rand(2, generator=generator) * 1.2 - 0.6
    disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < 0.3).float()
    return (color * disc - 0.5 * color * (1 - disc)).unsqueeze(0)  # [1, 3, size, size]


@dataclass
class Identities:
    unet: torch.nn.Module
    scheduler: object
    prompt: torch.Tensor  # [1, 4, 8] stand-in for the "sks person" text embedding
    images: list[torch.Tensor]
    folder: Path
    space: object


@pytest.fixture(scope="session")
def identities(tmp_path_factory) -> Identities:
    """A base UNet pre-trained on a family of disc images, then one rank-1 LoRA (alpha 27, to_q/to_v,
    as weights2weights) really fine-tuned per identity image, saved as peft adapter folders, and
    the exact weight space of those adapters."""
    from diffusers import DDPMScheduler

    from vision_kernels.weightspace import LoraDataset, denoising_loss, finetune_lora, fit_exact, write_adapter

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        unet = make_unet(seed=0)
        scheduler = DDPMScheduler(num_train_timesteps=1000)
        prompt = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(3))
        family = torch.cat([identity_image(1000 + i) for i in range(64)])
        optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(7)
        for _ in range(200):
            x0 = family[torch.randint(0, 64, (8,), generator=generator)]
            noise = torch.randn(x0.shape, generator=generator)
            timesteps = torch.randint(0, 1000, (8,), generator=generator)
            loss = denoising_loss(unet, scheduler, x0, prompt, noise, timesteps)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        unet.requires_grad_(False)
        images = [identity_image(i) for i in range(5)]
        folder = tmp_path_factory.mktemp("identities")
        for index, image in enumerate(images):
            vector, layout = finetune_lora(
                unet, scheduler, image, prompt, steps=150, lr=1e-2, batch_size=4, seed=0, base_model="tiny-unet"
            )
            write_adapter(folder / f"id{index}", vector, layout)
        space = fit_exact(LoraDataset.from_folder(folder), len(images) - 1)
    finally:
        torch.set_num_threads(threads)
    return Identities(unet, scheduler, prompt, images, folder, space)
