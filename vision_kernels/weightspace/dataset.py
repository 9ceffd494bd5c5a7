"""A dataset of LoRA adapters: one folder per customized model, flattened in one recorded layout."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .._progress import progress
from .adapters import LoraAdapter, read_adapter
from .layout import LoraLayout
from .storage import MatrixWriter

__all__ = ["LoraDataset", "natural_key"]


def natural_key(name: str) -> list[object]:
    """Sort key ordering ``model2`` before ``model10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class LoraDataset:
    """Adapters that share one :class:`LoraLayout`, read lazily, usable as a RowMatrix ``[N, D]``.

    Every adapter is checked against the first one when the dataset is built: a different rank,
    alpha, module set or shape raises ValueError naming both adapters and the difference; NaN or
    Inf weights raise ValueError naming the adapter and tensor.
    """

    def __init__(
        self, paths: Sequence[str | Path], names: Sequence[str] | None = None, *, show_progress: bool | None = None
    ) -> None:
        if not paths:
            raise ValueError("vision_kernels.weightspace.LoraDataset: no adapters given")
        self.paths = [Path(p) for p in paths]
        self.names = list(names) if names is not None else [p.name for p in self.paths]
        if len(self.names) != len(self.paths):
            raise ValueError(
                f"vision_kernels.weightspace.LoraDataset: {len(self.names)} names for {len(self.paths)} adapters"
            )
        first: LoraAdapter | None = None
        for path, name in progress(
            list(zip(self.paths, self.names, strict=True)), desc="checking adapters", enabled=show_progress
        ):
            adapter = read_adapter(path)
            if first is None:
                first = adapter
                continue
            difference = first.layout.difference(adapter.layout)
            if difference is not None:
                raise ValueError(
                    f"vision_kernels.weightspace.LoraDataset: adapter '{name}' ({path}) does not share the layout "
                    f"of '{self.names[0]}' ({self.paths[0]}): {difference}. A weight space needs adapters of one "
                    "layout (same base model, target modules, rank and alpha)"
                )
        assert first is not None
        self.layout: LoraLayout = first.layout
        self.metadata = {"layout": self.layout.to_json(), "names": json.dumps(self.names)}

    @classmethod
    def from_folder(cls, root: str | Path, *, show_progress: bool | None = None) -> LoraDataset:
        """Every sub-folder of ``root`` holding an adapter (``adapter_model.safetensors``,
        ``unet/adapter_model.safetensors`` or ``pytorch_lora_weights.safetensors``), in natural name order."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"vision_kernels.weightspace.LoraDataset: {root} is not a folder")
        markers = ("adapter_model.safetensors", "unet/adapter_model.safetensors", "pytorch_lora_weights.safetensors")
        folders = [p for p in root.iterdir() if p.is_dir() and any((p / m).is_file() for m in markers)]
        if not folders:
            raise ValueError(f"vision_kernels.weightspace.LoraDataset: no adapter folders in {root}")
        folders.sort(key=lambda p: natural_key(p.name))
        return cls(folders, show_progress=show_progress)

    # RowMatrix interface -------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.paths), self.layout.dim

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __len__(self) -> int:
        return len(self.paths)

    def vector(self, index: int) -> Tensor:
        """Model ``index`` as a ``[D]`` float32 vector (re-checked against the layout)."""
        adapter = read_adapter(self.paths[index])
        difference = self.layout.difference(adapter.layout)
        if difference is not None:
            raise ValueError(
                f"vision_kernels.weightspace.LoraDataset: adapter {self.paths[index]} changed on disk: {difference}"
            )
        return adapter.vector()

    def read(self, start: int, stop: int) -> Tensor:
        """Models ``[start, stop)`` as a ``[n, D]`` float32 tensor."""
        rows = range(max(0, start), min(len(self), stop))
        if not rows:
            return torch.empty((0, self.layout.dim))
        return torch.stack([self.vector(i) for i in rows])

    # conversions ---------------------------------------------------------------

    def to_tensor(self) -> Tensor:
        """All models as one ``[N, D]`` float32 tensor in memory."""
        return self.read(0, len(self))

    def write_matrix(
        self, path: str | Path, *, dtype: torch.dtype = torch.float32, show_progress: bool | None = None
    ) -> Path:
        """Write the ``[N, D]`` matrix to ``.safetensors`` (layout and names in its metadata) or ``.npy``,
        one adapter at a time; the streaming PCA fit reads it back by row blocks."""
        with MatrixWriter(path, len(self), self.layout.dim, dtype, self.metadata) as writer:
            for index in progress(range(len(self)), desc="writing weight matrix", enabled=show_progress):
                writer.append(self.vector(index))
        return Path(path)
