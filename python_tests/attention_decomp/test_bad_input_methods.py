"""The CLIP methods refuse the mistakes of issue 16 with one clear message: float or bool layer and head
indices are a TypeError (never truncated: ``[1.7]`` is not layer 1), zero images a ValueError."""

from __future__ import annotations

import pytest
import torch

import vision_kernels.clip as vc
from vision_kernels.clip.capture import capture
from vision_kernels.clip.decompose import normalize_layers


@pytest.mark.parametrize("layers", [[1.7], [True], "3", 2.0])
def test_layer_indices_must_be_ints(layers: object) -> None:
    with pytest.raises(TypeError, match="argument 'layers' must"):
        normalize_layers(layers, 4)  # type: ignore[arg-type]


def test_numpy_and_tensor_integers_are_layer_indices() -> None:
    import numpy as np

    assert normalize_layers([np.int64(1), torch.tensor(-1)], 4) == [1, 3]  # type: ignore[list-item]


def test_zero_images_and_float_indices(make_tiny_vit) -> None:  # type: ignore[no-untyped-def]
    model = make_tiny_vit()
    size = model.visual.image_size if hasattr(model, "visual") else model.image_size
    size = size if isinstance(size, tuple) else (size, size)
    empty = torch.zeros(0, 3, *size)
    with pytest.raises(ValueError, match="argument 'images' must hold at least one image, got shape \\[0, 3"):
        vc.decompose(model, empty)
    images = torch.rand(2, 3, *size)
    with pytest.raises(TypeError, match="argument 'layers' must hold ints, got float 0.5"):
        vc.decompose(model, images, layers=[0.5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="argument 'keep_neurons' must be an int, got float"):
        capture(model, images, keep_neurons=[1.0])  # type: ignore[list-item]
    decomposition = vc.decompose(model, images)
    with pytest.raises(TypeError, match="argument 'heads' must be an int, got float"):
        vc.mean_ablate(decomposition, heads=[(0.0, 1)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="argument 'mlps' must hold ints"):
        vc.mean_ablate(decomposition, mlps=[1.5])  # type: ignore[list-item]
