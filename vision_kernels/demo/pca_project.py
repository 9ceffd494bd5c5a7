"""Demo section of the pca family (weights2weights): a weight space of really fine-tuned LoRAs, then sampling,
editing and inversion, measured.

Everything runs offline on a tiny pixel-space diffusers UNet (random weights, pre-trained for a
few seconds on synthetic "identity" images: a colored disc on a contrasting background). Each
identity gets its own rank-1 LoRA on to_q/to_v (alpha 27, as weights2weights), fine-tuned on its
image and saved as a peft adapter folder. The folder becomes a LoraDataset, a weight matrix on
disk and a WeightSpace fitted by the streaming randomized PCA (checked against the exact fit).

A toy UNet trained for seconds cannot draw pictures, so the figure shows what can be measured:
the denoising loss of every model on every image (each fine-tuned model fits its own identity
best), the explained variance of both fits, samples against the training models in the first two
coordinates, an edit direction learned from attribute labels and what it does to the loss on the
images that have the attribute, and an inversion of an unseen image. The same calls run on
Stable Diffusion 1.5 with real identity LoRAs, where ``generate_latents`` then draws the images.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import save_figure, write_text_atomic

ORDER = 50  # place in the demo run (vision_kernels.demo discovers the sections)

SIZE = 8


def _identity(index: int) -> tuple[torch.Tensor, dict[str, float]]:
    """A colored disc on a contrasting background in [-1, 1], and its attributes."""
    generator = torch.Generator().manual_seed(100 + index)
    color = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    cx, cy = (torch.rand(2, generator=generator) * 1.2 - 0.6).tolist()
    disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < 0.3).float()
    image = (color * disc - 0.5 * color * (1 - disc)).unsqueeze(0)  # [1, 3, S, S]
    return image, {"red": float(color[0, 0, 0]), "right": cx}


def _to_rgb(image: torch.Tensor) -> np.ndarray:
    return ((image[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def _figure(path: Path, data: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(13, 7.8))
    (mosaic, matrix, variance), (samples, edit, inversion) = axes

    images = data["images"]
    columns = 3 if len(images) <= 6 else 4
    rows = (len(images) + columns - 1) // columns
    canvas = np.ones((rows * (SIZE + 1), columns * (SIZE + 1), 3))
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        canvas[r * (SIZE + 1) : r * (SIZE + 1) + SIZE, c * (SIZE + 1) : c * (SIZE + 1) + SIZE] = image
    mosaic.imshow(canvas, interpolation="nearest")
    mosaic.set_title("identities (one LoRA fine-tuned on each)", fontsize=9)
    mosaic.axis("off")

    losses = data["loss_matrix"]
    shown = matrix.imshow(losses, cmap="viridis")
    matrix.set_xlabel("image")
    matrix.set_yticks(range(len(losses)), data["loss_rows"], fontsize=7)
    matrix.set_title("denoising loss of each model on each image\n(white dots: best model per image)", fontsize=9)
    best = np.argmin(np.asarray(losses), axis=0)
    matrix.scatter(range(len(best)), best, c="white", s=12)
    figure.colorbar(shown, ax=matrix, fraction=0.046)

    k = np.arange(1, len(data["ev_streaming"]) + 1)
    variance.plot(k, np.cumsum(data["ev_streaming"]), "o-", label="fit_streaming (randomized, from disk)")
    variance.plot(k, np.cumsum(data["ev_exact"]), "x--", label="fit_exact (Gram)")
    variance.set_xlabel("components")
    variance.set_ylabel("cumulative explained variance")
    variance.legend(fontsize=8)
    variance.set_title("PCA of the standardized LoRA weights", fontsize=9)

    training, sampled = np.asarray(data["training_coefficients"]), np.asarray(data["sampled_coefficients"])
    samples.scatter(training[:, 0], training[:, 1], label="training models", marker="o")
    samples.scatter(sampled[:, 0], sampled[:, 1], label="sampled models", marker="+", alpha=0.6)
    start, end = np.asarray(data["edit_start"]), np.asarray(data["edit_end"])
    samples.annotate("", xy=end[:2], xytext=start[:2], arrowprops={"arrowstyle": "->", "color": "red"})
    samples.set_xlabel("coefficient 1")
    samples.set_ylabel("coefficient 2")
    samples.legend(fontsize=8)
    samples.set_title("sampling N(m_k, s_k^2) per component; red: an edit", fontsize=9)

    strengths = data["edit_strengths"]
    edit.plot(strengths, data["edit_contrast"], "o-")
    edit.axhline(0, color="gray", lw=0.5)
    edit.set_xlabel("edit strength (in std of coefficient 1)")
    edit.set_ylabel("loss on 'right' images - loss on the others")
    edit.set_title("edit direction 'right' ('red' projected out)", fontsize=9)

    steps, values = zip(*data["inversion_monitor"], strict=True)
    inversion.plot(steps, values, "o-", label="model being inverted")
    inversion.axhline(data["inversion_before"], color="gray", ls="--", label="mean model (start)")
    inversion.axhline(data["inversion_best_training"], color="green", ls=":", label="best training LoRA")
    inversion.set_xlabel("inversion step")
    inversion.set_ylabel("denoising loss on the target (fixed draws)")
    inversion.legend(fontsize=7)
    inversion.set_title("inversion of an unseen image", fontsize=9)

    figure.suptitle(data["title"], fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path


@dataclass
class _World:
    """The toy diffusion world: a tiny UNet pre-trained on disc images, its noise scheduler and prompt."""

    unet: torch.nn.Module
    scheduler: Any
    prompt: torch.Tensor  # [1, 4, 8] stand-in for the "sks person" text embedding
    draws: int  # noise draws per loss evaluation

    def loss(self, space: Any, coefficients: torch.Tensor, image: torch.Tensor) -> float:
        """Denoising loss on ``image`` of the model at ``coefficients`` in ``space`` (fixed draws)."""
        from ..weightspace import evaluate_denoising_loss

        return evaluate_denoising_loss(
            space, self.unet, self.scheduler, image, self.prompt, coefficients, draws=self.draws
        )


def _pretrained_world(steps: int, draws: int) -> _World:
    """A base model for the image family (the "Stable Diffusion" of this toy world)."""
    from diffusers import DDPMScheduler

    from ..weightspace import denoising_loss, tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet(sample_size=SIZE)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    prompt = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(3))
    family = torch.cat([_identity(1000 + i)[0] for i in range(64)])
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x0 = family[torch.randint(0, 64, (8,), generator=generator)]
        noise, t = torch.randn(x0.shape, generator=generator), torch.randint(0, 1000, (8,), generator=generator)
        training_loss = denoising_loss(unet, scheduler, x0, prompt, noise, t)
        optimizer.zero_grad()
        training_loss.backward()
        optimizer.step()
    unet.requires_grad_(False)
    return _World(unet, scheduler, prompt, draws)


def _finetune(world: _World, images: list[torch.Tensor], steps: int, adapters: Path) -> None:
    """One LoRA per identity, really fine-tuned, saved as peft adapter folders."""
    from ..weightspace import finetune_lora, write_adapter

    shutil.rmtree(adapters, ignore_errors=True)  # a previous run's adapters would join the dataset
    for index, image in enumerate(images):
        vector, layout = finetune_lora(world.unet, world.scheduler, image, world.prompt, steps=steps, lr=1e-2,
                                       batch_size=4, base_model="toy-disc-unet", show_progress=False)  # fmt: skip
        write_adapter(adapters / f"identity{index}", vector, layout)


def _edit_contrast(world: _World, space: Any, identities: list, strengths: list[float]) -> tuple[Any, list[float]]:
    """Edit direction "right" (disc on the right) with "red" projected out, applied to the mean model at
    each strength: the loss on right-disc images minus the loss on the others."""
    from ..weightspace import apply_edit, edit_direction

    labels = {name: [attributes[name] for _, attributes in identities] for name in ("right", "red")}
    direction = edit_direction(space.coefficients, labels["right"], project_out={"red": labels["red"]})
    right = [i for i, (_, a) in enumerate(identities) if a["right"] > 0]
    left = [i for i in range(len(identities)) if i not in right]
    contrast = []
    for strength in strengths:
        edited = apply_edit(torch.zeros(space.coefficients.shape[1]), direction, strength * _edit_scale(space))
        on_right = np.mean([world.loss(space, edited, identities[i][0]) for i in right]) if right else 0.0
        on_left = np.mean([world.loss(space, edited, identities[i][0]) for i in left]) if left else 0.0
        contrast.append(float(on_right - on_left))
    return direction, contrast


def _edit_scale(space: Any) -> float:
    return float(space.coefficient_std[0])


def _inversion(world: _World, space: Any, target: torch.Tensor, steps: int, out_dir: Path) -> dict[str, Any]:
    """Inversion of an unseen identity, exported as a diffusers adapter; the loss along the way."""
    from ..weightspace import invert, read_adapter

    monitored: list[tuple[int, float]] = []

    def monitor(step: int, coefficients: torch.Tensor) -> None:
        if step % 10 == 9:
            monitored.append((step + 1, world.loss(space, coefficients.clone(), target)))

    result = invert(space, world.unet, world.scheduler, target, world.prompt, steps=steps, lr=0.3, batch_size=8,
                    callback=monitor, show_progress=False)  # fmt: skip
    before = world.loss(space, torch.zeros(space.coefficients.shape[1]), target)
    exported = space.export_adapter(out_dir / "inverted_adapter", result.coefficients, format="diffusers")
    assert torch.equal(read_adapter(exported).vector(), space.reconstruct(result.coefficients))
    return {
        "before": before,
        "after": world.loss(space, result.coefficients, target),
        "best_training": min(world.loss(space, c, target) for c in space.coefficients),
        "monitor": [(0, before)] + monitored,
        "exported": exported,
    }


def run(out_dir: Path, quick: bool) -> list[Path]:
    from diffusers.utils import logging as diffusers_logging

    from ..weightspace import LoraDataset, apply_edit, fit_exact, fit_streaming, sample_coefficients

    diffusers_logging.set_verbosity_error()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny UNet is latency bound
    try:
        count = 6 if quick else 12
        pretrain_steps, finetune_steps, invert_steps, draws = (200, 150, 100, 16) if quick else (400, 250, 200, 32)
        world = _pretrained_world(pretrain_steps, draws)
        identities = [_identity(i) for i in range(count)]
        images = [image for image, _ in identities]
        _finetune(world, images, finetune_steps, out_dir / "adapters")

        # Dataset -> weight matrix on disk -> streaming fit (checked against the exact fit).
        dataset = LoraDataset.from_folder(out_dir / "adapters", show_progress=False)
        matrix = dataset.write_matrix(out_dir / "weights.safetensors", show_progress=False)
        components = count - 1
        space = fit_streaming(matrix, components, show_progress=False)
        exact = fit_exact(matrix, components, show_progress=False)
        space_path = space.save(out_dir / "w2w_space.safetensors")
        training = space.coefficients  # [count, components]: the streaming fit keeps the training coordinates
        assert training is not None
        mean_model = torch.zeros(components)
        loss_matrix = [[world.loss(space, training[i], image) for image in images] for i in range(count)]
        loss_matrix.append([world.loss(space, mean_model, image) for image in images])

        samples = sample_coefficients(space, 200, generator=torch.Generator().manual_seed(4))
        strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
        direction, contrast = _edit_contrast(world, space, identities, strengths)
        inversion = _inversion(world, space, _identity(count + 50)[0], invert_steps, out_dir)
        data = {
            "title": f"weights2weights on a toy UNet: {count} fine-tuned rank-1 LoRAs, "
            f"{dataset.layout.dim}-dimensional weight space, {components} components",
            "images": [_to_rgb(image) for image in images],
            "loss_matrix": loss_matrix,
            "loss_rows": [f"LoRA {i}" for i in range(count)] + ["mean model"],
            "ev_streaming": space.explained_variance_ratio.tolist(),
            "ev_exact": exact.explained_variance_ratio.tolist(),
            "training_coefficients": training.tolist(),
            "sampled_coefficients": samples.tolist(),
            "edit_start": mean_model.tolist(),
            "edit_end": apply_edit(mean_model, direction, 2 * _edit_scale(space)).tolist(),
            "edit_strengths": strengths,
            "edit_contrast": contrast,
            "inversion_monitor": inversion["monitor"],
            "inversion_before": inversion["before"],
            "inversion_best_training": inversion["best_training"],
        }
        figure = _figure(out_dir / "weights2weights.png", data)
        report = _summary(out_dir, data, dataset, space, space_path, inversion)
        return [figure, report, space_path]
    finally:
        torch.set_num_threads(threads)


def _summary(out_dir: Path, data: dict, dataset: Any, space: Any, space_path: Path, inversion: dict) -> Path:
    count = len(data["images"])
    own_best = float(np.mean(np.argmin(np.asarray(data["loss_matrix"][:count]), axis=0) == np.arange(count)))
    summary = {
        "models": count,
        "layout": dataset.layout.describe(),
        "fit": space.info,
        "explained_variance_streaming": data["ev_streaming"],
        "explained_variance_exact": data["ev_exact"],
        "images_best_fitted_by_their_own_lora": own_best,
        "edit_contrast_by_strength": dict(
            zip([str(s) for s in data["edit_strengths"]], data["edit_contrast"], strict=True)
        ),  # fmt: skip
        "inversion_denoising_loss": {
            "mean_model": inversion["before"],
            "inverted": inversion["after"],
            "best_training_lora": inversion["best_training"],
        },  # fmt: skip
        "exported_adapter": str(inversion["exported"]),
        "space": str(space_path),
    }
    report = out_dir / "summary.json"
    write_text_atomic(report, json.dumps(summary, indent=2) + "\n")
    return report
