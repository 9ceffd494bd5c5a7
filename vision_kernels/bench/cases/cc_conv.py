"""Benchmark cases of cc_conv2d: forward + backward against the unfold reference, F.conv2d at scale 1, and the
training example (one step of the resize network, PSNR against bicubic at unseen scales as metrics)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from vision_kernels.bench.harness import Contenders, case
from vision_kernels.ops import cc_conv2d, cc_conv2d_grid
from vision_kernels.reference.cc_conv import cc_conv2d as reference


def _forward_backward(batch: int, channels: int, size: int, scale: float, support: int = 3) -> Contenders:
    """Forward + backward (to input, per-phase weights and bias) at ``scale``: ours vs the unfold reference."""
    generator = torch.Generator().manual_seed(0)
    grid = cc_conv2d_grid((size, size), support, scale=scale)
    x = torch.randn(batch, channels, size, size, generator=generator).requires_grad_()  # [B, C, H, W]
    w = (torch.randn(*grid.phases, channels, channels, support, support, generator=generator) * 0.05).requires_grad_()
    b = torch.randn(channels, generator=generator).requires_grad_()
    grad = torch.randn(batch, channels, *grid.out_size, generator=generator)  # [B, O, H', W']

    def ours() -> tuple[torch.Tensor, ...]:
        out = cc_conv2d(x, w, b, scale=scale)
        return (out, *torch.autograd.grad(out, (x, w, b), grad))

    def unfold_reference() -> tuple[torch.Tensor, ...]:
        out = reference(x, w, b, size=grid.out_size, scale=grid.scale)
        return (out, *torch.autograd.grad(out, (x, w, b), grad))

    anchors: dict[str, Callable[[], object]] = {}
    if scale == 1.0:
        w0 = w[0, 0].detach().clone().requires_grad_()

        def conv2d() -> tuple[torch.Tensor, ...]:
            out = F.conv2d(x, w0, b, padding=support // 2)
            return (out, *torch.autograd.grad(out, (x, w0, b), grad))

        anchors["F.conv2d fwd+bwd"] = conv2d
    pixels = grid.out_size[0] * grid.out_size[1]
    return Contenders(
        ours=ours,
        reference=unfold_reference,
        anchors=anchors,
        flops=3 * 2.0 * batch * pixels * channels * channels * support * support,  # forward, grad input, grad weight
        metrics={"phases": f"{grid.phases[0]}x{grid.phases[1]}", "out_size": f"{grid.out_size[0]}x{grid.out_size[1]}"},
    )


@case("cc_conv", "cc_conv2d fwd+bwd B=8 C=64 64x64 scale 1.5 K=3 (quick: B=2 C=32 32x32)")
def upscale_1_5(quick: bool) -> Contenders:
    return _forward_backward(2, 32, 32, 1.5) if quick else _forward_backward(8, 64, 64, 1.5)


@case("cc_conv", "cc_conv2d fwd+bwd B=8 C=64 64x64 scale 0.7 K=3 (quick: B=2 C=32 32x32)")
def downscale_0_7(quick: bool) -> Contenders:
    return _forward_backward(2, 32, 32, 0.7) if quick else _forward_backward(8, 64, 64, 0.7)


@case("cc_conv", "cc_conv2d fwd+bwd B=8 C=64 64x64 scale 1 K=3 vs F.conv2d (quick: B=2 C=32 32x32)")
def identity_scale(quick: bool) -> Contenders:
    return _forward_backward(2, 32, 32, 1.0) if quick else _forward_backward(8, 64, 64, 1.0)


@contextlib.contextmanager
def _reference_layers() -> Iterator[None]:
    """Run every CCConv2d through the unfold reference instead of the kernels (for the training step anchor)."""
    import vision_kernels.nn.cc_conv as layers

    def unfold(x, weight, bias, *, size, scale, padding_mode, check_finite):  # type: ignore[no-untyped-def]
        return reference(x, weight, bias, size=size, scale=scale, padding_mode=padding_mode)

    original = layers.cc_conv2d
    layers.cc_conv2d = unfold  # type: ignore[assignment]
    try:
        yield
    finally:
        layers.cc_conv2d = original


@case(
    "cc_conv",
    "CC resize net: one training step, B=8 crops 96 px, scale 2.5; PSNR vs bicubic at unseen scales",
    quick=False,
    repeats=3,
)
def resize_training(quick: bool) -> Contenders:
    from vision_kernels.nn.resize_example import EVAL_SCALES, camera, evaluate, train

    net, gains = train(400)
    results = evaluate(net, (*EVAL_SCALES, 2.0))
    metrics: dict[str, float | str] = {"train_steps": 400, "train_gain_last50_db": sum(gains[-50:]) / 50}
    for result in results:
        label = f"s{result.scale}" + ("" if result.seen_in_training else "_unseen")
        metrics[f"{label}_psnr_cc"] = round(result.psnr_cc, 3)
        metrics[f"{label}_psnr_bicubic"] = round(result.psnr_bicubic, 3)
        metrics[f"{label}_gain_db"] = round(result.gain, 3)
    scene = torch.rand(8, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    x, target = camera(scene, 32), camera(scene, 80)

    def step() -> float:
        loss = F.mse_loss(net(x, 80), target)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        return float(loss) + float(grads[0].sum())

    def step_reference() -> float:
        with _reference_layers():
            return step()

    return Contenders(ours=step, reference=step_reference, metrics=metrics)
