"""The training example: area camera, the network's initial state, a short training run, evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vision_kernels.nn.resize_example import (
    EVAL_SCALES,
    ResizeNet,
    area_weights,
    camera,
    evaluate,
    load_gray,
    psnr,
    train,
)
from vision_kernels.ops import cc_conv2d_grid


def test_camera_is_exact_area_averaging() -> None:
    scene = torch.rand(2, 1, 48, 48)
    # Integer factor: the footprints are the 3 x 3 blocks.
    torch.testing.assert_close(camera(scene, 16), F.avg_pool2d(scene, 3), rtol=1e-5, atol=1e-6)
    assert camera(scene, 48) is scene
    # Any factor: each interior output's weights sum to 1 and cover a footprint of 1 / s^2 input pixels.
    grid = cc_conv2d_grid((48, 48), math.ceil(48 / 20) + 2, size=20)
    weights = area_weights(grid)  # [Py, Px, 1, 1, Kh, Kw]
    torch.testing.assert_close(weights.sum(dim=(-2, -1)), torch.ones(*grid.phases, 1, 1))
    # A constant scene stays constant; mass is conserved.
    torch.testing.assert_close(camera(torch.full((1, 1, 48, 48), 0.25), 20), torch.full((1, 1, 20, 20), 0.25))
    torch.testing.assert_close(camera(scene, 20).mean(), scene.mean(), rtol=2e-2, atol=0)
    with pytest.raises(ValueError, match=r"size 60 exceeds the scene's 48 pixels"):
        camera(scene, 60)


def test_psnr() -> None:
    a = torch.zeros(1, 1, 20, 20)
    assert psnr(a, a) == float("inf")
    assert psnr(a + 0.1, a) == pytest.approx(20.0)
    b = a.clone()
    b[..., :4, :] = 1  # only in the shaved border
    assert psnr(b, a, shave=4) == float("inf")


def test_untrained_network_is_exactly_bicubic() -> None:
    # R starts as F.interpolate's bicubic and the refinement branch's last layer at zero.
    net = ResizeNet()
    results = evaluate(net, (1.3, 0.6, 2.0), in_size=40)
    for result in results:
        assert result.psnr_cc == pytest.approx(result.psnr_bicubic, abs=0.02)
    assert [r.seen_in_training for r in results] == [False, False, True]
    assert results[0].cc.shape == results[0].target.shape == (52, 52)
    assert results[1].cc.shape == (24, 24) and results[1].input.shape == (40, 40)


def test_short_training_run() -> None:
    net = ResizeNet(features=4, hidden=(8,))
    before = [p.detach().clone() for p in net.parameters()]
    net, gains = train(8, net=net, batch=2, crop=48, in_size=16, scales=(0.5, 1.5, 3.0), images=("astronaut", "moon"))
    assert len(gains) == 8 and all(math.isfinite(g) for g in gains)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    results = evaluate(net, EVAL_SCALES, in_size=20, image="coins")
    assert [r.scale for r in results] == list(EVAL_SCALES)
    assert all(math.isfinite(r.psnr_cc) and math.isfinite(r.gain) for r in results)
    with pytest.raises(ValueError, match=r"in_size 16 x scale 3.0 > crop 40"):
        train(1, crop=40, in_size=16, scales=(3.0,))


def test_load_gray() -> None:
    image = load_gray("astronaut")
    assert image.shape == (512, 512) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    assert load_gray("camera").shape == (512, 512)
