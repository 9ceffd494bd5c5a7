"""What a :class:`~vision_kernels.clip.HeadIndex` indexes: its keys, their heads' contributions, the checks.

A key is a single head ``"L{layer}H{head}"`` or a named group of heads whose direct contributions are
summed. Shared by the in-memory build (:mod:`.index`) and the dataset-scale build (:mod:`.index_runs`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ..ops._checks import ArgCheck
from ._checks import layer_index
from .decompose import decompose
from .towers import VisionTower, check_images

__all__ = [
    "IVF_FROM",
    "Keys",
    "check_finite",
    "check_options",
    "chosen_kind",
    "contributions",
    "finite_images",
    "head_key",
    "image_batches",
    "parse_key",
    "resolve_keys",
]

METRICS = ("cosine", "ip")
KINDS = ("auto", "flat", "ivf")
IVF_FROM = 100_000  # "auto" switches to IVF from this many images

Keys = dict[str, tuple[tuple[int, int], ...]]


def head_key(layer: int, head: int) -> str:
    """The key of a single head's index: ``"L{layer}H{head}"``."""
    return f"L{int(layer)}H{int(head)}"


def parse_key(key: str) -> tuple[tuple[int, int], ...]:
    """``"L3H5"`` -> ``((3, 5),)``; other names -> ``()``."""
    if key.startswith("L") and "H" in key:
        layer, _, head = key[1:].partition("H")
        if layer.isdigit() and head.isdigit():
            return ((int(layer), int(head)),)
    return ()


def chosen_kind(kind: str, count: int | None) -> str:
    """``"flat"`` or ``"ivf"``: ``"auto"`` picks IVF from :data:`IVF_FROM` images (an unknown count is small)."""
    return "ivf" if kind == "ivf" or (kind == "auto" and (count or 0) >= IVF_FROM) else "flat"


def _as_pairs(value: Iterable[Sequence[int]], function: str, name: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for item in value:
        if len(item) != 2:
            raise ValueError(f"{function}: argument '{name}' must hold (layer, head) pairs, got {item!r}")
        check = ArgCheck(function)
        pairs.append((check.integer(item[0], name), check.integer(item[1], name)))
    if not pairs:
        raise ValueError(f"{function}: argument '{name}' must hold at least one (layer, head) pair")
    return tuple(pairs)


def resolve_keys(
    tower: VisionTower,
    heads: Iterable[Sequence[int]] | None,
    layers: Iterable[int] | None,
    groups: Mapping[str, Iterable[Sequence[int]]] | None,
    function: str,
) -> Keys:
    """``{key: ((layer, head), ...)}`` of the single heads, the heads of whole layers and the named groups."""
    keys: Keys = {}
    num_layers, num_heads = tower.num_layers, tower.heads
    pairs = list(_as_pairs(heads, function, "heads")) if heads is not None else []
    for position, layer in enumerate(ArgCheck(function).integers(layers or (), "layers")):
        pairs += [(layer_index(layer, num_layers, function, "layers", position), h) for h in range(num_heads)]
    for layer, head in pairs:
        keys[head_key(layer, head)] = ((layer, head),)
    for name, members in (groups or {}).items():
        if name in keys:
            raise ValueError(f"{function}: argument 'groups' has name {name!r}, which is the key of a single head")
        keys[str(name)] = _as_pairs(members, function, f"groups[{name!r}]")
    if not keys:
        raise ValueError(f"{function}: give the heads to index: 'heads', 'layers' or 'groups'")
    for members in keys.values():
        for layer, head in members:
            if not 0 <= layer < num_layers or not 0 <= head < num_heads:
                raise IndexError(
                    f"{function}: head ({layer}, {head}) is out of range for a model with {num_layers} layers of "
                    f"{num_heads} heads"
                )
    return keys


def image_batches(images: Tensor | Iterable, batch_size: int) -> tuple[Iterable, int | None]:
    """Batches of images and, when known, how many images there are."""
    if isinstance(images, Tensor):
        return images.split(batch_size), images.shape[0]
    dataset = getattr(images, "dataset", None)
    total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    return images, total


def contributions(
    tower: VisionTower, images: Tensor, keys: Mapping[str, tuple[tuple[int, int], ...]]
) -> dict[str, Tensor]:
    """``{key: [B, E]}`` summed direct contributions (normalized by ``|z|``) of each key's heads."""
    layers = sorted({layer for members in keys.values() for layer, _ in members})
    heads = decompose(tower, images, layers=layers, per_head=True, normalize=True, keep_capture=False).heads
    position = {layer: i for i, layer in enumerate(layers)}  # heads: [B, S, H, E]
    out = {}
    for key, members in keys.items():
        terms = [heads[:, position[layer], head] for layer, head in members]  # each [B, E]
        out[key] = functools.reduce(operator.add, terms).float()
    return out


def check_finite(values: Tensor, function: str, name: str) -> None:
    """ValueError when ``values`` holds NaN or Inf (which FAISS would index or search silently)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(
            f"{function}: argument '{name}' must be finite, got {int(bad.sum())} NaN/Inf values of {values.numel()}"
        )


def finite_images(tower: VisionTower, images: object, function: str) -> Tensor:
    """``images`` checked against the tower (:func:`~.towers.check_images`) and for NaN/Inf."""
    checked = check_images(tower, images, function)
    check_finite(checked, function, "images")
    return checked


def check_options(metric: str, kind: str, batch_size: int, sample_size: int, function: str) -> None:
    """ValueError naming the argument for an unknown metric or kind, or a batch or sample size below 1."""
    if metric not in METRICS:
        raise ValueError(f"{function}: argument 'metric' must be one of {METRICS}, got {metric!r}")
    if kind not in KINDS:
        raise ValueError(f"{function}: argument 'kind' must be one of {KINDS}, got {kind!r}")
    if batch_size < 1:
        raise ValueError(f"{function}: argument 'batch_size' must be >= 1, got {batch_size}")
    if sample_size < 1:
        raise ValueError(f"{function}: argument 'sample_size' must be >= 1, got {sample_size}")
