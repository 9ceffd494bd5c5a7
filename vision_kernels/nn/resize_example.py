"""Training example: a tiny network of CC layers learns arbitrary-scale resizing, evaluated at unseen scales.

Data: grayscale versions of skimage's sample images (no download). A high-resolution crop is the scene; a
"camera" of ``n x n`` pixels sees it by integrating the scene over each pixel's footprint (exact area
averaging on the centred grid, itself a ``cc_conv2d`` with analytic weights). Input and target come from
the same scene through the same camera model, so the target at scale ``s`` is the scene seen at ``s``
times the input's resolution (super-resolution for ``s > 1``, downscaling for ``s < 1``). Training uses the scales
``TRAIN_SCALES`` only; evaluation uses ``EVAL_SCALES`` (1.3, 2.7, 0.6), which the network never saw, on a
held-out image (``camera``). The baseline is bicubic resizing of the input (antialiased when downscaling),
on the same centred grid (``align_corners=False``). PSNR is measured on [0, 1] images, borders of 4 pixels
shaved.

Network (every layer a :class:`~vision_kernels.nn.CCConv2d`, ``padding_mode="replicate"``)::

    y = R(x, s) + T(U(H(x), s))

``R`` resizes the image itself (1 -> 1 channels, an :class:`~vision_kernels.nn.InterpolationFilter`: bicubic
as a prior plus a learned correction); ``H`` extracts features at the input resolution (two 3x3 layers at
scale 1); ``U`` resizes the features to the output size (an MLP filter with Fourier features); ``T`` refines
at the output resolution (two 3x3 layers, the last one starting at zero). At initialization the network is
therefore normalized bicubic resizing; training learns what to add, from the training scales only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._progress import progress
from ..ops.cc_conv import cc_conv2d
from ..ops.cc_conv_grid import CCGrid, cc_conv2d_grid
from .cc_conv import CCConv2d, InterpolationFilter

__all__ = [
    "TRAIN_IMAGES",
    "EVAL_IMAGE",
    "TRAIN_SCALES",
    "EVAL_SCALES",
    "ResizeNet",
    "load_gray",
    "area_weights",
    "camera",
    "psnr",
    "train",
    "evaluate",
    "EvalResult",
]

TRAIN_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "moon", "coins")
EVAL_IMAGE = "camera"
TRAIN_SCALES = (0.5, 0.75, 1.5, 2.0, 2.5, 3.0)
EVAL_SCALES = (1.3, 2.7, 0.6)


def load_gray(name: str) -> Tensor:
    """skimage sample image ``name`` as a float32 ``[H, W]`` tensor in [0, 1] (luminance for RGB)."""
    from skimage import color, data

    image = np.asarray(getattr(data, name)())
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    elif image.dtype == np.uint8:
        image = image / 255.0
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))


def area_weights(grid: CCGrid) -> Tensor:
    """``[Py, Px, 1, 1, Kh, Kw]`` area-sampling weights on a downscaling grid (``s <= 1`` per axis).

    Output pixel i covers ``[x(i) - 1 / (2 s), x(i) + 1 / (2 s)]`` on the input; tap j gets the length of that
    footprint's overlap with input pixel ``[j - 1/2, j + 1/2]``, times ``s`` (so a full footprint sums to 1).
    """
    offsets = grid.tap_offsets(torch.float64)  # [Py, Px, Kh, Kw, 2], tap minus output position
    half = 0.5 / torch.tensor(grid.scale, dtype=torch.float64)  # [2]
    overlap = (torch.minimum(offsets + 0.5, half) - torch.maximum(offsets - 0.5, -half)).clamp_min(0)
    weights = overlap[..., 0] * overlap[..., 1] * (grid.scale[0] * grid.scale[1])  # [Py, Px, Kh, Kw]
    return weights[:, :, None, None].float()


def camera(scene: Tensor, size: int) -> Tensor:
    """``scene [B, 1, L, L]`` seen by a ``size x size`` sensor (``size <= L``): every pixel integrates the scene
    over its footprint (exact fractional-area averaging on the centred grid, computed with ``cc_conv2d`` and
    analytic weights; edge pixels replicated); the identity at ``size == L``."""
    length = int(scene.shape[-1])
    if size == length:
        return scene
    if size > length:
        raise ValueError(f"vision_kernels.nn.resize_example.camera: size {size} exceeds the scene's {length} pixels")
    support = math.ceil(length / size) + 2
    grid = cc_conv2d_grid((length, length), support, size=size)
    weight = area_weights(grid).to(scene.dtype)
    return cc_conv2d(scene, weight, size=size, padding_mode="replicate", check_finite=False)


def psnr(prediction: Tensor, target: Tensor, shave: int = 4) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1], ``shave`` border pixels excluded."""
    crop = (..., slice(shave, -shave or None), slice(shave, -shave or None))
    mse = float(((prediction.clamp(0, 1) - target)[crop] ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


class ResizeNet(nn.Module):
    """``y = R(x, s) + T(U(H(x), s))``: a tiny resizing network of CC layers (see the module docstring)."""

    def __init__(
        self, features: int = 12, support: int = 4, image_support: int = 8, hidden: tuple[int, ...] = (32, 32)
    ) -> None:
        super().__init__()
        cc_conv = partial(CCConv2d, padding_mode="replicate", hidden=hidden)
        k = (image_support, image_support)
        interpolation = InterpolationFilter(1, k, hidden=hidden, fourier_features=8)
        self.resize_image = CCConv2d(1, 1, k, padding_mode="replicate", bias=False, filter=interpolation)  # R
        self.head = nn.ModuleList([cc_conv(1, features, 3), cc_conv(features, features, 3)])
        self.resize_features = cc_conv(features, features, support, fourier_features=8)  # U
        self.tail = nn.ModuleList([cc_conv(features, features, 3), cc_conv(features, 1, 3)])
        last = self.tail[1]
        assert isinstance(last, CCConv2d) and isinstance(last.filter, nn.Module) and last.bias is not None
        nn.init.zeros_(last.filter.mlp[-1].weight)  # type: ignore[index, union-attr]
        nn.init.zeros_(last.filter.mlp[-1].bias)  # type: ignore[index, union-attr]
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, size: int | tuple[int, int]) -> Tensor:
        """``x [B, 1, H, W]`` -> ``[B, 1, h, w]`` at ``size`` (scale ``h / H`` per axis).

        Every layer's filter is conditioned on the network's scale ``s``: the resize layers through their
        grid, the scale-1 layers of ``H`` and ``T`` through ``filter_scale`` (so that, e.g., ``T`` can sharpen
        when upscaling and stay out of the way when downscaling).
        """
        out_h, out_w = (size, size) if isinstance(size, int) else size
        scale = (out_h / x.shape[2], out_w / x.shape[3])
        features = x
        for layer in self.head:
            features = F.gelu(layer(features, filter_scale=scale))
        features = F.gelu(self.resize_features(features, size=(out_h, out_w)))
        features = F.gelu(self.tail[0](features, filter_scale=scale))
        return self.resize_image(x, size=(out_h, out_w)) + self.tail[1](features, filter_scale=scale)


def _crops(images: list[Tensor], count: int, size: int, generator: torch.Generator) -> Tensor:
    """``count`` random ``size x size`` crops (random image, position, flips, rotation): ``[count, 1, size, size]``."""
    crops = []
    for _ in range(count):
        image = images[int(torch.randint(len(images), (1,), generator=generator))]
        top = int(torch.randint(image.shape[0] - size + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[1] - size + 1, (1,), generator=generator))
        crop = image[top : top + size, left : left + size]
        if bool(torch.randint(2, (1,), generator=generator)):
            crop = crop.flip(1)
        crops.append(torch.rot90(crop, int(torch.randint(4, (1,), generator=generator))))
    return torch.stack(crops)[:, None]


def train(
    steps: int,
    *,
    batch: int = 8,
    crop: int = 96,
    in_size: int = 32,
    scales: tuple[float, ...] = TRAIN_SCALES,
    images: tuple[str, ...] = TRAIN_IMAGES,
    lr: float = 5e-3,
    seed: int = 0,
    net: ResizeNet | None = None,
) -> tuple[ResizeNet, list[float]]:
    """Train a :class:`ResizeNet` for ``steps`` Adam steps; returns it and the PSNR gain over bicubic per step.

    Each step draws one scale from ``scales`` and ``batch`` crops of ``crop`` pixels; the input is the crop
    seen at ``in_size`` pixels, the target the crop seen at ``round(in_size * s)`` pixels (both by
    :func:`camera`), so ``in_size * max(scales)`` must not exceed ``crop``. The loss is
    ``10 log10(MSE)`` (minus the batch PSNR): downscaled targets are almost exactly bicubic of the input
    and their MSE is 100x smaller than when upscaling, so a plain MSE would let the upscaling batches
    dominate and trade away the downscaling ones; the log weights every scale by its relative error.
    """
    if in_size * max(scales) > crop:
        raise ValueError(
            f"vision_kernels.nn.resize_example.train: in_size {in_size} x scale {max(scales)} > crop {crop}"
        )
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    pictures = [load_gray(name) for name in images]
    net = net if net is not None else ResizeNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    warmup = max(1, steps // 10)  # linear warmup, then cosine decay

    def factor(step: int) -> float:
        return (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        )

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    gains = []
    for _ in progress(range(steps), desc="training CC resize net", total=steps):
        scale = scales[int(torch.randint(len(scales), (1,), generator=generator))]
        scene = _crops(pictures, batch, crop, generator)  # [B, 1, crop, crop]
        out_size = round(in_size * scale)
        x, target = camera(scene, in_size), camera(scene, out_size)
        loss = 10 * torch.log10(F.mse_loss(net(x, out_size), target))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            bicubic = F.interpolate(x, size=out_size, mode="bicubic", antialias=scale < 1, align_corners=False)
            gains.append(10 * float(torch.log10(F.mse_loss(bicubic.clamp(0, 1), target))) - float(loss.detach()))
    return net, gains


@dataclass
class EvalResult:
    """PSNR (dB) of the network and of bicubic resizing at one scale, and the images compared."""

    scale: float
    seen_in_training: bool
    psnr_cc: float
    psnr_bicubic: float
    input: Tensor
    target: Tensor
    cc: Tensor
    bicubic: Tensor

    @property
    def gain(self) -> float:
        return self.psnr_cc - self.psnr_bicubic


@torch.no_grad()
def evaluate(
    net: ResizeNet,
    scales: tuple[float, ...] = EVAL_SCALES,
    *,
    image: str = EVAL_IMAGE,
    in_size: int = 100,
    train_scales: tuple[float, ...] = TRAIN_SCALES,
) -> list[EvalResult]:
    """PSNR of ``net`` and of bicubic at each scale on the centre crop of ``image`` (``in_size * s`` must be
    an integer for an exact scale; the scene is the centre crop of ``max(in_size * s)`` pixels)."""
    picture = load_gray(image)
    sizes = [round(in_size * s) for s in scales]
    side = max(max(sizes), in_size)
    top, left = (picture.shape[0] - side) // 2, (picture.shape[1] - side) // 2
    scene = picture[top : top + side, left : left + side][None, None]  # [1, 1, side, side]
    x = camera(scene, in_size)
    results = []
    for scale, size in zip(scales, sizes, strict=True):
        target = camera(scene, size)
        predicted = net(x, size).clamp(0, 1)
        bicubic = F.interpolate(x, size=(size, size), mode="bicubic", antialias=size < in_size, align_corners=False)
        bicubic = bicubic.clamp(0, 1)
        results.append(
            EvalResult(
                scale=scale,
                seen_in_training=any(abs(scale - s) < 1e-9 for s in train_scales),
                psnr_cc=psnr(predicted, target),
                psnr_bicubic=psnr(bicubic, target),
                input=x[0, 0],
                target=target[0, 0],
                cc=predicted[0, 0],
                bicubic=bicubic[0, 0],
            )
        )
    return results
