"""Demo section for the CLIP decomposition: exactness check, TextSpan table for one head, heatmaps.

Uses a random-weight open_clip ViT-B-32 unless ``VK_CLIP_MODEL`` / ``VK_CLIP_PRETRAINED`` name a
model and pretrained weights that load (e.g. ``VK_CLIP_PRETRAINED=laion2b_s34b_b79k``; weights
come from open_clip's cache or a download). With random weights the numbers are real (the
decomposition is exact for any weights) but the texts and heatmaps carry no meaning.

Writes ``decomposition.md`` (sum of terms vs ``encode_image`` for both conventions, share of the
embedding carried by each layer), ``layer_contributions.png``, ``textspan.md`` (the greedy text
basis of the head with the largest variance over the images) and ``heatmaps.png`` (text heatmaps
over skimage's sample images).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import save_figure, write_text_atomic

ORDER = 20  # place in the demo run (vision_kernels.demo discovers the sections)

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket")
HEATMAP_TEXTS = ("an astronaut", "a cat", "a cup of coffee", "a rocket")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _model() -> tuple[torch.nn.Module, Callable[..., Any] | None, str]:
    from ..clip import load_clip

    name = os.environ.get("VK_CLIP_MODEL", "ViT-B-32")
    pretrained = os.environ.get("VK_CLIP_PRETRAINED") or None
    if pretrained:
        try:
            loaded = load_clip(name, pretrained)
            return loaded.model, loaded.tokenizer, f"{name} ({pretrained} weights)"
        except Exception as error:  # no weights in the cache and no network: say so, continue
            print(f"   could not load {name}/{pretrained} ({type(error).__name__}: {error}); using random weights")
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    loaded = load_clip(name)
    return loaded.model, loaded.tokenizer, f"{name} (random weights)"


def _text_bank(model: torch.nn.Module, tokenizer: Callable[..., Any] | None, quick: bool) -> tuple[list[str], Any]:
    """The general text bank (every 6th text when quick) and its embeddings ``[T, E]``."""
    from .. import clip as vc

    bank = vc.load_text_bank("general")
    if quick:
        bank = bank[::6]
    return bank, vc.encode_texts(model, bank, tokenizer=tokenizer)


def _images(size: int, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """skimage samples at ``size`` (in [0, 1], for display) and ``copies`` augmented variants of each, normalized."""
    from skimage import data, transform

    pictures = [transform.resize(getattr(data, n)(), (size, size), anti_aliasing=True) for n in SAMPLES]
    display = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).float()  # [S, 3, H, W] in [0, 1]
    generator = torch.Generator().manual_seed(0)
    variants = [display]
    for _ in range(copies - 1):  # flips, brightness and small shifts: many images for TextSpan's variance
        flipped = display.flip(-1) if torch.rand(1, generator=generator) < 0.5 else display
        gain = 0.7 + 0.6 * torch.rand(len(SAMPLES), 1, 1, 1, generator=generator)
        shift = int(torch.randint(-16, 17, (1,), generator=generator))
        variants.append((flipped * gain).roll(shift, dims=-1).clamp(0, 1))
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return display, (torch.cat(variants) - mean) / std


def run(out_dir: Path, quick: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import clip as vc

    model, tokenizer, description = _model()
    tower = vc.as_vision_tower(model)
    display, images = _images(tower.image_size[0], 4 if quick else 16)
    samples = images[: len(SAMPLES)]
    written: list[Path] = []

    # 1. Exactness and per-layer shares.
    with torch.no_grad():
        plain = tower.encode(samples).double()  # the model's own image embedding (open_clip or transformers)
    lines = [
        f"# CLIP decomposition of {description}",
        "",
        "| convention | max relative error of sum vs encode_image |",
        "|---|---|",
    ]
    for convention in vc.CONVENTIONS:
        decomposition = vc.decompose(model, samples, convention=convention, keep_capture=False)
        error = ((decomposition.total() - plain).norm(dim=-1) / plain.norm(dim=-1)).max()
        lines.append(f"| {convention} | {float(error):.2e} |")
    per_term = vc.decompose(model, samples, keep_capture=False)
    norm = plain.norm(dim=-1, keepdim=True).float()
    attention_share = (per_term.heads.sum(2).norm(dim=-1) / norm).mean(0)  # [L]
    mlp_share = (per_term.mlps.norm(dim=-1) / norm).mean(0)  # [L]
    lines += [
        "",
        "| layer | mean norm of attention terms / norm of z | mean norm of MLP term / norm of z |",
        "|---|---|---|",
    ]
    lines += [
        f"| {layer} | {float(a):.3f} | {float(m):.3f} |"
        for layer, (a, m) in enumerate(zip(attention_share, mlp_share, strict=True))
    ]
    write_text_atomic((out_dir / "decomposition.md"), "\n".join(lines) + "\n")
    written.append(out_dir / "decomposition.md")
    figure, axis = plt.subplots(figsize=(6, 3))
    layers = np.arange(len(attention_share))
    axis.bar(layers - 0.2, attention_share.numpy(), width=0.4, label="attention (all heads)")
    axis.bar(layers + 0.2, mlp_share.numpy(), width=0.4, label="MLP")
    axis.set_xlabel("layer")
    axis.set_ylabel("mean |term| / |z|")
    axis.set_title(f"Direct contributions per layer, {description}", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, out_dir / "layer_contributions.png", dpi=110)
    plt.close(figure)
    written.append(out_dir / "layer_contributions.png")

    # 2. TextSpan of the last layer's head with the largest variance over the image set.
    bank, text_embeddings = _text_bank(model, tokenizer, quick)
    heads = vc.decompose(model, images, layers=[-1], keep_capture=False).heads[:, 0]  # [K, H, E]
    head = int(heads.var(0).sum(-1).argmax())
    result = vc.text_span(heads[:, head], text_embeddings, bank, num_texts=5 if quick else 10)
    table = vc.format_text_spans({(tower.num_layers - 1, head): result})
    header = f"# TextSpan, {description}: {len(bank)} texts, {heads.shape[0]} images (skimage samples and variants)\n\n"
    write_text_atomic((out_dir / "textspan.md"), header + table)
    written.append(out_dir / "textspan.md")

    # 3. Heatmaps of a few texts over the sample images (last 4 layers, contrast: mean of the texts).
    texts = vc.encode_texts(model, list(HEATMAP_TEXTS), tokenizer=tokenizer)
    maps = vc.text_heatmaps(model, samples, texts, layers=list(range(-4, 0)), contrast="mean")
    written.append(
        vc.overlay_figure(
            display,
            maps,
            out_dir / "heatmaps.png",
            titles=list(HEATMAP_TEXTS),
            row_titles=list(SAMPLES),
            suptitle=f"Text heatmaps (last 4 layers, class contrast), {description}",
        )  # fmt: skip
    )
    return written
