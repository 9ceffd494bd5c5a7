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
from pathlib import Path
from typing import Any

import torch

from .._files import save_figure, write_text_atomic
from .attention_decomp import HEATMAP_TEXTS, SAMPLES, _images, _model

ORDER = 60  # place in the demo run (vision_kernels.demo discovers the sections)


def _timed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(function(*args, **kwargs), seconds)``."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def run(out_dir: Path, quick: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import clip as vc
    from ..reference.second_order import direct_second_order_effects

    model, tokenizer, description = _model()
    tower = vc.as_vision_tower(model)
    num_layers = tower.num_layers
    layer = num_layers - 3  # the paper's layer 9 of 12
    display, images = _images(tower.image_size[0], 4 if quick else 12)
    samples = images[: len(SAMPLES)]
    train, held_out = images[len(SAMPLES) :], samples
    written: list[Path] = []

    # 1. The factorized kernel against the direct definition, then statistics and significance.
    neurons = list(range(0, tower.blocks[layer].mlp_width(), 48 if quick else 12))
    directions, build = _timed(vc.neuron_directions, model, layer)
    fast, fast_time = _timed(vc.neuron_effects, model, samples[:1], layer, neurons)
    slow, slow_time = _timed(direct_second_order_effects, model, samples[:1], layer, neurons)
    error = float((fast.double() - slow.double()).abs().max() / slow.double().abs().max())
    stats = vc.collect_neuron_statistics(model, train, layer, top_k=4, batch_size=16)
    effects = vc.neuron_effects(model, held_out, layer, directions=directions)  # [S, Nn, E]
    fraction = stats.significant_fraction(effects)
    norms = (effects.double() - stats.mean).norm(dim=-1)  # [S, Nn]
    lines = [
        f"# Second-order effects of MLP layer {layer} neurons, {description}",
        "",
        f"Later layers {list(directions.later_layers)} x {tower.heads} heads; {directions.neurons.numel()} neurons; "
        f"directions {tuple(directions.directions.shape)} built once in {build:.2f} s.",
        "",
        "| computation | neurons | time (s) | max relative error |",
        "|---|---|---|---|",
        f"| factorized kernel (capture + fused op) | {len(neurons)} | {fast_time:.3f} | {error:.2e} |",
        f"| direct definition (per-token writes in width space) | {len(neurons)} | {slow_time:.3f} | - |",
        "",
        f"Statistics on {stats.count} images (top {stats.top_k}); significance on {len(held_out)} held-out images:",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| mean fraction of significant effects per neuron | {float(fraction.mean()):.3f} |",
        f"| neurons never significant on held-out images | {int((fraction == 0).sum())} / {fraction.numel()} |",
        f"| mean energy of the top effects along the principal direction | {float(stats.explained.mean()):.3f} |",
    ]
    write_text_atomic((out_dir / "second_order.md"), "\n".join(lines) + "\n")
    written.append(out_dir / "second_order.md")
    figure, axes = plt.subplots(1, 2, figsize=(9, 3))
    axes[0].hist(norms.flatten().numpy(), bins=60, log=True)
    axes[0].set_xlabel("|effect - mean| (held-out images x neurons)")
    axes[0].set_title("Second-order effect norms", fontsize=9)
    axes[1].hist(stats.explained.numpy(), bins=40)
    axes[1].set_xlabel("energy of the top effects along the principal direction")
    axes[1].set_title("Principal directions", fontsize=9)
    figure.suptitle(f"Layer {layer}, {description}", fontsize=9)
    figure.tight_layout()
    save_figure(figure, out_dir / "neuron_effects.png", dpi=100)
    plt.close(figure)
    written.append(out_dir / "neuron_effects.png")

    # 2. Sparse text decompositions of the principal directions of the neurons with the largest effects.
    bank = vc.load_text_bank("general")
    if quick:
        bank = bank[::6]
    text_embeddings = vc.encode_texts(model, bank, tokenizer=tokenizer)
    strongest = stats.top_norms[:, 0].topk(4 if quick else 8).indices
    assert stats.neurons is not None  # statistics collected from neuron_directions name their neurons
    result = vc.sparse_text_decomposition(stats.principal[strongest], text_embeddings, bank, n_nonzero=5)
    names = [f"neuron {int(stats.neurons[i])} of layer {layer}" for i in strongest]
    header = f"# Sparse text decompositions (OMP, 5 texts of {len(bank)}), {description}\n\n"
    write_text_atomic((out_dir / "sparse_texts.md"), header + result.format(names))
    written.append(out_dir / "sparse_texts.md")

    # 3. Neuron-based segmentation: neurons most aligned with each sample's text.
    texts = vc.encode_texts(model, list(HEATMAP_TEXTS), tokenizer=tokenizer)
    layer_stats = [stats]
    if not quick:  # the paper uses three layers
        layer_stats += [
            vc.collect_neuron_statistics(model, train, other, top_k=4, batch_size=16)
            for other in (layer - 1, layer + 1)
        ]
    top = min(50, sum(s.principal.shape[0] for s in layer_stats))
    maps = torch.stack(
        [
            vc.neuron_segmentation(model, samples[i : i + 1], layer_stats, texts[i], top=top).scores[0]
            for i in range(len(SAMPLES))
        ]
    )
    written.append(
        vc.overlay_figure(
            display,
            maps,
            out_dir / "neuron_segmentation.png",
            titles=["neurons"],
            row_titles=list(HEATMAP_TEXTS),
            suptitle=f"Neuron-based segmentation (top {top} neurons), {description}",
        )
    )

    # 4. CLIP-InterpreT: a saved head index, per-head neighbours, topic and contrastive segmentation.
    last = num_layers - 1
    group = {"property (2 heads)": [(last, 0), (last - 1, 1)]}
    index = vc.HeadIndex.build(
        model,
        images,
        layers=[last],
        groups=group,
        batch_size=16,
        ids=[f"{SAMPLES[i % len(SAMPLES)]}#{i // len(SAMPLES)}" for i in range(len(images))],
    )
    folder = index.save(out_dir / "head_index")
    reloaded = vc.HeadIndex.load(folder, model)
    written.append(folder / "meta.json")
    by_image = vc.image_neighbors(reloaded, model, samples, last, 0, k=4)
    by_property = vc.property_neighbors(reloaded, model, samples, "property (2 heads)", k=4)
    by_text = vc.text_neighbors(reloaded, texts, last, 0, k=4)
    lines = [f"# CLIP-InterpreT searches over {len(index)} images, {description}", ""]
    for title, found, queries in (
        (f"Per-head neighbours of an image (layer {last}, head 0)", by_image, SAMPLES),
        ("Property-based neighbours (group of 2 heads)", by_property, SAMPLES),
        (f"Per-head neighbours of a text (layer {last}, head 0)", by_text, HEATMAP_TEXTS),
    ):
        lines += [f"## {title}", "", "| query | neighbours (id: cosine) |", "|---|---|"]
        assert found.ids is not None  # the index was built with ids
        for query, ids, scores in zip(queries, found.ids, found.scores.tolist(), strict=True):
            lines.append(f"| {query} | " + ", ".join(f"{i}: {s:.2f}" for i, s in zip(ids, scores, strict=True)) + " |")
        lines.append("")
    write_text_atomic((out_dir / "interpret_neighbors.md"), "\n".join(lines))
    written.append(out_dir / "interpret_neighbors.md")
    topics = vc.head_topic_segmentation(model, samples, last, 0, texts, contrast="mean")
    contrast = vc.contrastive_segmentation(model, samples, texts[0], texts[1], layers=list(range(-4, 0)))
    panels = torch.cat([topics.heatmaps[:, :2], contrast.heatmaps[:, None]], 1)  # [S, 3, H, W]
    written.append(
        vc.overlay_figure(
            display,
            panels,
            out_dir / "interpret_segmentation.png",
            titles=[
                f"topic: {HEATMAP_TEXTS[0]}",
                f"topic: {HEATMAP_TEXTS[1]}",
                f"{HEATMAP_TEXTS[0]} vs {HEATMAP_TEXTS[1]}",
            ],
            row_titles=list(SAMPLES),
            suptitle=f"Head ({last}, 0) topics and contrastive segmentation, {description}",
        )
    )
    return written
