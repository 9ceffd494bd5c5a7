"""Demo section for continuous convolution (CCConv2d, cc_conv2d).

1. A tiny network of CC layers trained to resize skimage images at scales {0.5, 0.75, 1.5, 2, 2.5, 3},
   evaluated on the held-out ``camera`` image at scales it never saw (1.3, 2.7, 0.6) and at 2.0:
   PSNR against bicubic, and the images side by side.
2. The misalignment of strided convolutions: a centred blob after three 3x3 / stride 2 / padding 1 layers
   has drifted by (2^3 - 1) / 2 = 3.5 original pixels; after three CC layers at scale 1/2 it is still centred.
3. The taps of the network's learned image-resize filter at three scales, against its bicubic start.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .._files import save_figure, write_text_atomic
from ..nn import InterpolationFilter
from ..nn.alignment import centroid, downscale_drift
from ..nn.resize_example import EVAL_SCALES, ResizeNet, evaluate, train

ORDER = 30  # place in the demo run (vision_kernels.demo discovers the sections)


def _figure():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _resize_figure(path: Path, results: list, steps: int) -> Path:
    plt = _figure()
    figure, axes = plt.subplots(len(results), 4, figsize=(12, 3.1 * len(results)), squeeze=False)
    for row, result in zip(axes, results, strict=True):
        seen = "seen in training" if result.seen_in_training else "never seen in training"
        panels = [
            (f"input {tuple(result.input.shape)}", result.input),
            (f"bicubic x{result.scale}: {result.psnr_bicubic:.2f} dB", result.bicubic),
            (f"CC net x{result.scale} ({seen}): {result.psnr_cc:.2f} dB", result.cc),
            (f"target {tuple(result.target.shape)}", result.target),
        ]
        for axis, (caption, image) in zip(row, panels, strict=True):
            axis.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axis.set_title(caption, fontsize=8)
            axis.axis("off")
    figure.suptitle(f"CC resize network after {steps} training steps: PSNR against the target", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path


def _misalignment_figure(path: Path) -> tuple[Path, dict[str, float]]:
    drift = downscale_drift(layers=3)
    measured = {
        "strided_shift_original_px": drift.strided_shift[1],
        "cc_shift_original_px": drift.cc_shift[1],
        "predicted_strided_shift_original_px": drift.predicted_strided_shift,
    }
    centre = (drift.centred.shape[-1] - 1) / 2
    plt = _figure()
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    panels = [
        ("input 64x64, blob at the centre", drift.image, (drift.image.shape[-1] - 1) / 2, None),
        (
            f"3 strided convs: shift {drift.strided_shift[1]:.2f} original px",
            drift.strided,
            centre,
            centroid(drift.strided)[1],
        ),
        (
            f"3 CC layers (scale 1/2): shift {drift.cc_shift[1]:.1e} px",
            drift.centred,
            centre,
            centroid(drift.centred)[1],
        ),
    ]
    for axis, (caption, t, middle, found) in zip(axes, panels, strict=True):
        axis.imshow(t[0, 0].numpy(), cmap="magma")
        axis.axvline(middle, color="cyan", lw=0.8, label="image centre")
        if found is not None:
            axis.axvline(found, color="lime", lw=0.8, ls="--", label="blob centroid")
        axis.set_title(caption, fontsize=8)
        axis.axis("off")
    axes[1].legend(fontsize=7, loc="lower right")
    figure.suptitle(
        "Strided convolutions shift content by half an input pixel per layer; the centred grid does not", fontsize=9
    )
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path, measured


def _filter_figure(path: Path, net: ResizeNet) -> Path:
    """The image-resize layer's taps (phase (0, 0), the row of taps nearest the output) at three scales."""
    layer = net.resize_image
    prior = InterpolationFilter(1, layer.support, learned=False)
    plt = _figure()
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    with torch.no_grad():
        for axis, scale in zip(axes, (0.6, 1.3, 2.7), strict=True):
            grid = layer.grid((100, 100), scale=scale)
            offsets = grid.tap_offsets()  # [Py, Px, Kh, Kw, 2]
            row = int(offsets[0, 0, :, 0, 0].abs().argmin())
            dx = offsets[0, 0, row, :, 1].numpy()
            learned = layer.weights(grid)[0, 0, 0, 0, row].numpy()  # [Kw]
            bicubic = prior(offsets, grid.scale)[0, 0, row, :, 0, 0].numpy()
            axis.plot(dx, bicubic, "o--", color="gray", label="bicubic (initial)")
            axis.plot(dx, learned, "o-", color="tab:red", label="learned")
            axis.axhline(0, color="black", lw=0.5)
            axis.set_title(
                f"scale {scale}: taps of phase (0, 0), row dy = {float(offsets[0, 0, row, 0, 0]):+.2f}", fontsize=8
            )
            axis.set_xlabel("offset dx (input pixels)", fontsize=8)
            axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("The CC resize layer's continuous filter, evaluated on each call's grid", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=100)
    plt.close(figure)
    return path


def run(out_dir: Path, quick: bool) -> list[Path]:
    steps = 60 if quick else 400
    net, gains = train(steps)
    results = evaluate(net, (*EVAL_SCALES, 2.0))
    table = {
        "train_steps": steps,
        "train_scales": [0.5, 0.75, 1.5, 2.0, 2.5, 3.0],
        "eval_image": "camera",
        "results": [
            {
                "scale": r.scale,
                "seen_in_training": r.seen_in_training,
                "psnr_cc_db": round(r.psnr_cc, 3),
                "psnr_bicubic_db": round(r.psnr_bicubic, 3),
                "gain_db": round(r.gain, 3),
            }
            for r in results
        ],
    }
    for r in results:
        print(
            f"   scale {r.scale:>4} ({'seen' if r.seen_in_training else 'unseen'}): CC {r.psnr_cc:.2f} dB, "
            f"bicubic {r.psnr_bicubic:.2f} dB, gain {r.gain:+.2f} dB",
            flush=True,
        )
    misalignment_path, measured = _misalignment_figure(out_dir / "misalignment.png")
    table["misalignment"] = {k: round(v, 6) for k, v in measured.items()}
    psnr_path = out_dir / "resize_psnr.json"
    write_text_atomic(psnr_path, json.dumps(table, indent=2) + "\n")
    return [
        _resize_figure(out_dir / "resize_unseen_scales.png", results, steps),
        misalignment_path,
        _filter_figure(out_dir / "learned_filter.png", net),
        psnr_path,
    ]
