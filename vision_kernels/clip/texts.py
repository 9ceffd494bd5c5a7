"""Text banks, text embeddings and zero-shot classifiers for CLIP models.

A text bank is a plain text file with one description per line; empty lines and lines starting
with ``#`` are skipped. ``load_text_bank("general")`` loads the bank shipped with the package
(265 short image descriptions written for it); any other argument is a path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _progress

__all__ = [
    "BANKS_DIR",
    "DEFAULT_TEMPLATES",
    "available_text_banks",
    "load_text_bank",
    "encode_texts",
    "zero_shot_classifier",
]

BANKS_DIR = Path(__file__).with_name("text_banks")

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a painting of a {}.",
    "a cropped photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
)


def available_text_banks() -> list[str]:
    """Names of the text banks shipped with the package."""
    return sorted(p.stem for p in BANKS_DIR.glob("*.txt"))


def load_text_bank(source: str | Path) -> list[str]:
    """The descriptions of a text bank: a shipped bank's name (see :func:`available_text_banks`) or a file path.

    Raises:
        FileNotFoundError: no such bank or file; ValueError: the bank holds no description.
    """
    path = Path(source)
    if not path.suffix and not path.exists() and (BANKS_DIR / f"{source}.txt").exists():
        path = BANKS_DIR / f"{source}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"vision_kernels.clip.load_text_bank: argument 'source' must be a text file or one of "
            f"{available_text_banks()}, got {str(source)!r}"
        )
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t and not t.startswith("#")]
    if not texts:
        raise ValueError(f"vision_kernels.clip.load_text_bank: the text bank {str(path)!r} is empty")
    return texts


def _text_encoder(model: Any) -> tuple[Callable[[Any], Tensor], str]:
    if hasattr(model, "encode_text"):
        return (lambda tokens: model.encode_text(tokens)), "open_clip"
    if hasattr(model, "get_text_features"):

        def encode(inputs: Any) -> Tensor:
            out = model.get_text_features(**inputs)
            return out if isinstance(out, Tensor) else out.pooler_output

        return encode, "transformers"
    raise TypeError(
        "vision_kernels.clip.encode_texts: argument 'model' must have a text tower (open_clip CLIP with "
        f"encode_text, or transformers CLIPModel), got {type(model).__name__}; image-only models need "
        "text embeddings computed elsewhere"
    )


def encode_texts(
    model: Any,
    texts: Sequence[str],
    *,
    tokenizer: Callable[..., Any] | None = None,
    batch_size: int = 256,
    normalize: bool = True,
) -> Tensor:
    """Embed ``texts`` with the model's text tower: ``[M, E]`` (L2-normalized by default).

    Args:
        model: open_clip ``CLIP`` (uses ``encode_text``) or transformers ``CLIPModel``
            (``get_text_features``).
        texts: the descriptions (a text bank).
        tokenizer: open_clip: ``open_clip.get_tokenizer(name)`` (default: ``open_clip.tokenize``
            with the model's context length); transformers: required, e.g. ``CLIPTokenizer``.
        batch_size: texts per forward pass.
        normalize: L2-normalize each embedding (as CLIP's zero-shot classifiers do).

    Raises:
        ValueError: empty ``texts``; TypeError: a model without a text tower, or no tokenizer for
        a transformers model.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("vision_kernels.clip.encode_texts: argument 'texts' must hold at least one text (empty bank)")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("vision_kernels.clip.encode_texts: argument 'texts' must be a sequence of strings")
    encode, kind = _text_encoder(model)
    if kind == "open_clip":
        if tokenizer is None:
            import open_clip

            context = int(getattr(model, "context_length", 77) or 77)

            def tokenizer(batch: list[str]) -> Tensor:
                return open_clip.tokenize(batch, context_length=context)

    elif tokenizer is None:
        raise TypeError(
            "vision_kernels.clip.encode_texts: argument 'tokenizer' is required for transformers models "
            "(e.g. transformers.CLIPTokenizer.from_pretrained(name))"
        )
    tokenize: Callable[..., Any] = tokenizer  # the given one, or open_clip's default above
    device = next(model.parameters()).device
    outputs = []
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    with torch.no_grad():
        for batch in _progress.progress(batches, desc="encode texts", enabled=None if len(batches) > 1 else False):
            if kind == "open_clip":
                tokens = tokenize(batch).to(device)
            else:
                encoded = tokenize(batch, padding=True, return_tensors="pt")
                tokens = {k: v.to(device) for k, v in encoded.items()}
            outputs.append(encode(tokens).float())
    embeddings = torch.cat(outputs)
    return F.normalize(embeddings, dim=-1) if normalize else embeddings


def zero_shot_classifier(
    model: Any,
    classnames: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    tokenizer: Callable[..., Any] | None = None,
) -> Tensor:
    """Zero-shot weights ``[E, C]``: per class, the normalized mean of its normalized prompt embeddings.

    ``logits = normalize(image_embeddings) @ classifier``; templates contain ``{}`` for the class name.
    """
    classnames = list(classnames)
    if not classnames:
        raise ValueError("vision_kernels.clip.zero_shot_classifier: argument 'classnames' must not be empty")
    if not templates or not all("{}" in t for t in templates):
        raise ValueError(
            "vision_kernels.clip.zero_shot_classifier: argument 'templates' must be non-empty prompts with '{}'"
        )
    prompts = [template.format(name) for name in classnames for template in templates]
    embeddings = encode_texts(model, prompts, tokenizer=tokenizer)  # [C * T, E]
    per_class = embeddings.view(len(classnames), len(templates), -1).mean(1)  # [C, E]
    return F.normalize(per_class, dim=-1).T.contiguous()
