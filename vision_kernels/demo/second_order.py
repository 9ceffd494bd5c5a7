"""Demo section for the CLIP-neuron family: second-order effects, neuron statistics, sparse text decompositions,
neuron-based segmentation and CLIP-InterpreT's analyses.

Uses the CLIP demo's model (a random-weight open_clip ViT-B-32 unless ``VK_CLIP_MODEL`` /
``VK_CLIP_PRETRAINED`` name weights that load) and skimage's sample images with augmented variants. With
random weights the numbers are real (the factorization is exact for any weights, the statistics, searches and
maps are computed as they would be) but the texts and maps carry no meaning.

Writes ``second_order.md`` (factorized kernel vs the direct definition: error and time; neuron statistics and
significance on held-out images), ``neuron_effects.png`` (sparsity of the effects), ``sparse_texts.md`` (OMP
decompositions of principal directions over the "general" text bank), ``neuron_segmentation.png``,
``head_index/`` (a saved FAISS head index, reloaded and checked), ``interpret_neighbors.md`` and
``interpret_segmentation.png`` (topic and contrastive segmentation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._files import save_figure, write_text_atomic
from .attention_decomp import HEATMAP_TEXTS, SAMPLES, _images, _model, _text_bank

ORDER = 60  # place in the demo run (vision_kernels.demo discovers the sections)


def _timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(function(*args, **kwargs), seconds)``."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


@dataclass
class _Setup:
    """What every part of the section uses: the model, its tower, the images and the studied layer."""

    model: Any
    tokenizer: Callable[..., Any] | None
    description: str
    tower: Any
    layer: int  # the paper's layer 9 of 12
    display: Any  # the images as shown in figures
    images: torch.Tensor  # [K, 3, S, S], the samples first
    samples: torch.Tensor  # [len(SAMPLES), 3, S, S]
    train: torch.Tensor  # the images after the samples
    out_dir: Path
    quick: bool


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _effects(setup: _Setup, written: list[Path]) -> Any:
    """The factorized kernel against the direct definition, then statistics and significance; returns the
    neuron statistics of the layer."""
    from .. import clip as vc
    from ..reference.second_order import direct_second_order_effects

    model, layer, samples = setup.model, setup.layer, setup.samples
    neurons = list(range(0, setup.tower.blocks[layer].mlp_width(), 48 if setup.quick else 12))
    directions, build = _timed(vc.neuron_directions, model, layer)
    fast, fast_time = _timed(vc.neuron_effects, model, samples[:1], layer, neurons)
    slow, slow_time = _timed(direct_second_order_effects, model, samples[:1], layer, neurons)
    error = float((fast.double() - slow.double()).abs().max() / slow.double().abs().max())
    stats = vc.collect_neuron_statistics(model, setup.train, layer, top_k=4, batch_size=16)
    effects = vc.neuron_effects(model, samples, layer, directions=directions)  # [S, Nn, E], held-out images
    fraction = stats.significant_fraction(effects)
    lines = [
        f"# Second-order effects of MLP layer {layer} neurons, {setup.description}",
        "",
        f"Later layers {list(directions.later_layers)} x {setup.tower.heads} heads; {directions.neurons.numel()} "
        f"neurons; directions {tuple(directions.directions.shape)} built once in {build:.2f} s.",
        "",
        "| computation | neurons | time (s) | max relative error |",
        "|---|---|---|---|",
        f"| factorized kernel (capture + fused op) | {len(neurons)} | {fast_time:.3f} | {error:.2e} |",
        f"| direct definition (per-token writes in width space) | {len(neurons)} | {slow_time:.3f} | - |",
        "",
        f"Statistics on {stats.count} images (top {stats.top_k}); significance on {len(samples)} held-out images:",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| mean fraction of significant effects per neuron | {float(fraction.mean()):.3f} |",
        f"| neurons never significant on held-out images | {int((fraction == 0).sum())} / {fraction.numel()} |",
        f"| mean energy of the top effects along the principal direction | {float(stats.explained.mean()):.3f} |",
    ]
    write_text_atomic((setup.out_dir / "second_order.md"), "\n".join(lines) + "\n")
    written.append(setup.out_dir / "second_order.md")
    norms = (effects.double() - stats.mean).norm(dim=-1)  # [S, Nn]
    written.append(_effects_figure(setup, norms, stats.explained))
    return stats


def _effects_figure(setup: _Setup, norms: torch.Tensor, explained: torch.Tensor) -> Path:
    plt = _plt()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].hist(norms.flatten().numpy(), bins=60, log=True)
    axes[0].set_xlabel("|effect - mean| (held-out images x neurons)")
    axes[0].set_title("Second-order effect norms", fontsize=9)
    axes[1].hist(explained.numpy(), bins=40)
    axes[1].set_xlabel("energy of the top effects along the principal direction")
    axes[1].set_title("Principal directions", fontsize=9)
    figure.suptitle(f"Layer {setup.layer}, {setup.description}", fontsize=9)
    figure.tight_layout()
    save_figure(figure, setup.out_dir / "neuron_effects.png", dpi=100)
    plt.close(figure)
    return setup.out_dir / "neuron_effects.png"


def _sparse_texts(setup: _Setup, stats: Any) -> Path:
    """Sparse text decompositions of the principal directions of the neurons with the largest effects."""
    from .. import clip as vc

    bank, text_embeddings = _text_bank(setup.model, setup.tokenizer, setup.quick)
    strongest = stats.top_norms[:, 0].topk(4 if setup.quick else 8).indices
    assert stats.neurons is not None  # statistics collected from neuron_directions name their neurons
    result = vc.sparse_text_decomposition(stats.principal[strongest], text_embeddings, bank, n_nonzero=5)
    names = [f"neuron {int(stats.neurons[i])} of layer {setup.layer}" for i in strongest]
    header = f"# Sparse text decompositions (OMP, 5 texts of {len(bank)}), {setup.description}\n\n"
    write_text_atomic((setup.out_dir / "sparse_texts.md"), header + result.format(names))
    return setup.out_dir / "sparse_texts.md"


def _segmentation(setup: _Setup, stats: Any, texts: torch.Tensor) -> Path:
    """Neuron-based segmentation: the neurons most aligned with each sample's text."""
    from .. import clip as vc

    layer_stats = [stats]
    if not setup.quick:  # the paper uses three layers
        layer_stats += [
            vc.collect_neuron_statistics(setup.model, setup.train, other, top_k=4, batch_size=16)
            for other in (setup.layer - 1, setup.layer + 1)
        ]
    top = min(50, sum(s.principal.shape[0] for s in layer_stats))
    samples = setup.samples
    maps = torch.stack(
        [
            vc.neuron_segmentation(setup.model, samples[i : i + 1], layer_stats, texts[i], top=top).scores[0]
            for i in range(len(SAMPLES))
        ]
    )
    return vc.overlay_figure(
        setup.display,
        maps,
        setup.out_dir / "neuron_segmentation.png",
        titles=["neurons"],
        row_titles=list(HEATMAP_TEXTS),
        suptitle=f"Neuron-based segmentation (top {top} neurons), {setup.description}",
    )


def _interpret_neighbors(setup: _Setup, texts: torch.Tensor, written: list[Path]) -> None:
    """CLIP-InterpreT: a saved head index, then per-head, property and text neighbours."""
    from .. import clip as vc

    model, images, samples, last = setup.model, setup.images, setup.samples, setup.tower.num_layers - 1
    ids = [f"{SAMPLES[i % len(SAMPLES)]}#{i // len(SAMPLES)}" for i in range(len(images))]
    group = {"property (2 heads)": [(last, 0), (last - 1, 1)]}
    index = vc.HeadIndex.build(model, images, layers=[last], groups=group, batch_size=16, ids=ids)
    folder = index.save(setup.out_dir / "head_index")
    reloaded = vc.HeadIndex.load(folder, model)
    written.append(folder / "meta.json")
    searches = (
        (f"Per-head neighbours of an image (layer {last}, head 0)", vc.image_neighbors(reloaded, model, samples, last,
         0, k=4), SAMPLES),
        ("Property-based neighbours (group of 2 heads)", vc.property_neighbors(reloaded, model, samples,
         "property (2 heads)", k=4), SAMPLES),
        (f"Per-head neighbours of a text (layer {last}, head 0)", vc.text_neighbors(reloaded, texts, last, 0, k=4),
         HEATMAP_TEXTS),
    )  # fmt: skip
    lines = [f"# CLIP-InterpreT searches over {len(index)} images, {setup.description}", ""]
    for title, found, queries in searches:
        lines += [f"## {title}", "", "| query | neighbours (id: cosine) |", "|---|---|"]
        assert found.ids is not None  # the index was built with ids
        for query, found_ids, scores in zip(queries, found.ids, found.scores.tolist(), strict=True):
            pairs = ", ".join(f"{i}: {s:.2f}" for i, s in zip(found_ids, scores, strict=True))
            lines.append(f"| {query} | {pairs} |")
        lines.append("")
    write_text_atomic((setup.out_dir / "interpret_neighbors.md"), "\n".join(lines))
    written.append(setup.out_dir / "interpret_neighbors.md")


def _interpret_segmentation(setup: _Setup, texts: torch.Tensor) -> Path:
    """CLIP-InterpreT: topic segmentation of one head and contrastive segmentation of two texts."""
    from .. import clip as vc

    last = setup.tower.num_layers - 1
    topics = vc.head_topic_segmentation(setup.model, setup.samples, last, 0, texts, contrast="mean")
    contrast = vc.contrastive_segmentation(setup.model, setup.samples, texts[0], texts[1], layers=list(range(-4, 0)))
    panels = torch.cat([topics.heatmaps[:, :2], contrast.heatmaps[:, None]], 1)  # [S, 3, H, W]
    first, second = HEATMAP_TEXTS[0], HEATMAP_TEXTS[1]
    return vc.overlay_figure(
        setup.display,
        panels,
        setup.out_dir / "interpret_segmentation.png",
        titles=[f"topic: {first}", f"topic: {second}", f"{first} vs {second}"],
        row_titles=list(SAMPLES),
        suptitle=f"Head ({last}, 0) topics and contrastive segmentation, {setup.description}",
    )


def run(out_dir: Path, quick: bool) -> list[Path]:
    from .. import clip as vc

    model, tokenizer, description = _model()
    tower = vc.as_vision_tower(model)
    display, images = _images(tower.image_size[0], 4 if quick else 12)
    setup = _Setup(model, tokenizer, description, tower, tower.num_layers - 3, display, images,
                   images[: len(SAMPLES)], images[len(SAMPLES) :], out_dir, quick)  # fmt: skip
    written: list[Path] = []
    stats = _effects(setup, written)
    written.append(_sparse_texts(setup, stats))
    texts = vc.encode_texts(model, list(HEATMAP_TEXTS), tokenizer=tokenizer)
    written.append(_segmentation(setup, stats, texts))
    _interpret_neighbors(setup, texts, written)
    written.append(_interpret_segmentation(setup, texts))
    return written
