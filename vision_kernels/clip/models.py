"""Loading CLIP models for the decomposition: open_clip names with optional pretrained weights.

``load_clip("ViT-B-32")`` builds a random-weight model (no download); ``load_clip("ViT-B-32",
"laion2b_s34b_b79k")`` loads open_clip's pretrained weights (downloaded by open_clip on first
use, or read from its cache); ``load_clip("hf:openai/clip-vit-base-patch32")`` loads a transformers
``CLIPModel`` and its tokenizer from the Hugging Face hub (or its cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LoadedClip", "load_clip"]


@dataclass
class LoadedClip:
    """A CLIP model with what it takes to feed it.

    Attributes:
        model: the model (eval mode).
        preprocess: image transform (PIL image -> tensor), None for transformers models (use their
            image processor).
        tokenizer: text tokenizer to pass to :func:`vision_kernels.clip.encode_texts`.
        name: the model name; pretrained: the weights' tag (None: random weights).
    """

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor] | None
    tokenizer: Callable[..., Any] | None
    name: str
    pretrained: str | None


def load_clip(name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu") -> LoadedClip:
    """Build an open_clip model (random weights unless ``pretrained`` names weights) or a transformers one.

    ``name`` is an open_clip model name, or ``hf:<model id>`` for a transformers ``CLIPModel``.

    Raises:
        ValueError: an unknown open_clip model name (lists how to find the known ones).
        RuntimeError / OSError from open_clip or transformers when pretrained weights cannot be loaded.
    """
    if name.startswith("hf:"):
        from transformers import AutoTokenizer, CLIPModel

        model_id = name[3:]
        model: nn.Module = CLIPModel.from_pretrained(model_id)
        model = model.to(device).eval()
        return LoadedClip(model, None, AutoTokenizer.from_pretrained(model_id), name, model_id)
    import open_clip

    if name not in open_clip.list_models():
        raise ValueError(
            f"vision_kernels.clip.load_clip: argument 'name' must be an open_clip model name "
            f"(see open_clip.list_models()) or 'hf:<model id>', got {name!r}"
        )
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    model.eval()
    return LoadedClip(model, preprocess, open_clip.get_tokenizer(name), name, pretrained)
