"""The fitted weights2weights space: mean, std, principal components, and the way back to adapters."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..ops._checks import ArgCheck
from ..ops.pca import pca_project, pca_reconstruct
from .adapters import LoraAdapter, read_adapter, write_adapter
from .layout import LoraLayout

__all__ = ["WeightSpace"]

FORMAT = "vision_kernels.weightspace/1"


@dataclass
class WeightSpace:
    """A linear space of customized models (weights2weights).

    A model with LoRA weight vector ``w`` (``[D]``, in ``layout`` order) has coordinates
    ``c = ((w - mean) / std) @ basis`` and is rebuilt as ``w = (c @ basis^T) * std + mean``;
    the columns of ``basis`` are the principal components of the standardized training weights,
    in decreasing order of ``singular_values``.

    Attributes:
        mean, std: ``[D]`` float32 per-dimension statistics of the training models (std floored).
        basis: ``[D, K]`` orthonormal components (float32, or float16/bfloat16 storage).
        singular_values: ``[K]`` singular values of the standardized ``[N, D]`` training matrix.
        n_models: N, the number of training models.
        total_variance: squared Frobenius norm of the standardized training matrix.
        layout: the LoRA layout of the vectors (needed to read and write adapters), or None.
        coefficients: ``[N, K]`` coordinates of the training models, or None.
        names: names of the training models, or None.
        info: how the space was fitted (method, seed, std floor, ...).
    """

    mean: Tensor
    std: Tensor
    basis: Tensor
    singular_values: Tensor
    n_models: int
    total_variance: float
    layout: LoraLayout | None = None
    coefficients: Tensor | None = None
    names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check = ArgCheck("vision_kernels.weightspace.WeightSpace")
        check.rank(self.basis, "basis", 2, "[D, K]")
        dims, components = self.basis.shape
        check.shape(self.mean, "mean", (dims,), "[D]")
        check.shape(self.std, "std", (dims,), "[D]")
        check.shape(self.singular_values, "singular_values", (components,), "[K]")
        check.floating(self.basis, "basis")
        for name in ("mean", "std", "basis"):
            check.finite(getattr(self, name), name)
        bad = ~(self.std > 0)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            check.fail("std", f"must be > 0 everywhere, got {self.std[index].item()} at index ({index},)")
        if self.layout is not None and self.layout.dim != dims:
            check.fail("layout", f"must describe {dims} dimensions, got {self.layout.dim}")
        if self.coefficients is not None:
            check.shape(self.coefficients, "coefficients", (self.n_models, components), "[N, K]")
        if self.names is not None and len(self.names) != self.n_models:
            check.fail("names", f"must have {self.n_models} entries, got {len(self.names)}")

    # ------------------------------------------------------------ sizes and statistics

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.basis.shape[1])

    @property
    def explained_variance_ratio(self) -> Tensor:
        """``[K]`` fraction of the standardized training variance along each component."""
        return self.singular_values.double().square() / self.total_variance

    @property
    def coefficient_std(self) -> Tensor:
        """``[K]`` standard deviation of each coefficient over the training models (``s / sqrt(N - 1)``)."""
        return self.singular_values.double() / math.sqrt(self.n_models - 1)

    @property
    def coefficient_mean(self) -> Tensor:
        """``[K]`` mean coefficient of the training models (zero up to rounding: the data is centered)."""
        if self.coefficients is not None:
            return self.coefficients.double().mean(0)
        return torch.zeros(self.n_components, dtype=torch.float64)

    def truncate(self, n_components: int) -> WeightSpace:
        """The same space restricted to its first ``n_components`` components."""
        ArgCheck("vision_kernels.weightspace.WeightSpace.truncate").in_range(
            n_components, "n_components", 1, self.n_components + 1
        )
        return replace(
            self,
            basis=self.basis[:, :n_components],
            singular_values=self.singular_values[:n_components],
            coefficients=None if self.coefficients is None else self.coefficients[:, :n_components],
        )

    def to(self, device: str | torch.device | None = None, basis_dtype: torch.dtype | None = None) -> WeightSpace:
        """Move the space (and optionally store the basis in another dtype)."""
        return replace(
            self,
            mean=self.mean.to(device),
            std=self.std.to(device),
            basis=self.basis.to(device, basis_dtype or self.basis.dtype),
        )

    # ------------------------------------------------------------ coordinates

    def _components(self, count: int | None, function: str) -> Tensor:
        if count is None:
            return self.basis
        ArgCheck(function).in_range(count, "n_components", 0, self.n_components + 1)
        return self.basis[:, :count]

    def project(self, weights: Tensor, n_components: int | None = None) -> Tensor:
        """Coordinates ``c = ((w - mean) / std) @ basis[:, :k]`` of ``[B, D]`` or ``[D]`` weights."""
        function = "vision_kernels.weightspace.WeightSpace.project"
        ArgCheck(function).finite(weights, "weights")
        basis = self._components(n_components, function)
        accumulate = torch.float64 if basis.dtype == torch.float64 else torch.float32
        dtype = weights.dtype if weights.dtype in (basis.dtype, accumulate) else accumulate
        return pca_project(weights.to(self.basis.device, dtype), self.mean, self.std, basis, check_finite=False)

    def reconstruct(self, coefficients: Tensor, *, out_dtype: torch.dtype = torch.float32) -> Tensor:
        """Weights ``w = (c @ basis[:, :k]^T) * std + mean`` of ``[B, k]`` or ``[k]`` coordinates
        (``k <= K``: the first k components). Differentiable in ``coefficients``."""
        function = "vision_kernels.weightspace.WeightSpace.reconstruct"
        ArgCheck(function).finite(coefficients.detach(), "coefficients")
        basis = self._components(int(coefficients.shape[-1]), function)
        return pca_reconstruct(coefficients, self.mean, self.std, basis, out_dtype=out_dtype, check_finite=False)

    # ------------------------------------------------------------ adapters

    def _layout(self, function: str) -> LoraLayout:
        if self.layout is None:
            raise ValueError(
                f"{function}: this space has no LoRA layout (fit it from a LoraDataset or pass layout=...)"
            )
        return self.layout

    def adapter_vector(self, adapter: str | Path | LoraAdapter) -> Tensor:
        """The ``[D]`` vector of an adapter folder, checked against the space's layout."""
        function = "vision_kernels.weightspace.WeightSpace.adapter_vector"
        layout = self._layout(function)
        adapter = adapter if isinstance(adapter, LoraAdapter) else read_adapter(adapter)
        difference = layout.difference(adapter.layout)
        if difference is not None:
            raise ValueError(f"{function}: adapter {adapter.path} does not fit this space: {difference}")
        return adapter.vector()

    def encode_adapter(self, adapter: str | Path | LoraAdapter, n_components: int | None = None) -> Tensor:
        """Coordinates of an adapter folder in this space."""
        return self.project(self.adapter_vector(adapter), n_components)

    def export_adapter(
        self,
        path: str | Path,
        coefficients: Tensor | None = None,
        *,
        weights: Tensor | None = None,
        format: str = "peft",
        dtype: torch.dtype = torch.float32,
    ) -> Path:
        """Write the model at ``coefficients`` (or the raw ``[D]`` ``weights``) as a LoRA adapter that
        diffusers (``format="diffusers"``, ``pipe.load_lora_weights``) or peft (``format="peft"``,
        ``PeftModel.from_pretrained``) loads unchanged."""
        function = "vision_kernels.weightspace.WeightSpace.export_adapter"
        layout = self._layout(function)
        if (coefficients is None) == (weights is None):
            raise ValueError(f"{function}: pass exactly one of 'coefficients' and 'weights'")
        vector = self.reconstruct(coefficients) if coefficients is not None else weights
        assert vector is not None
        return write_adapter(path, vector.detach().reshape(-1), layout, format=format, dtype=dtype)

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Save as one safetensors file (tensors + layout, names and fit info in its metadata)."""
        from safetensors.torch import save_file

        tensors = {
            "mean": self.mean.detach().cpu().contiguous(),
            "std": self.std.detach().cpu().contiguous(),
            "basis": self.basis.detach().cpu().contiguous(),
            "singular_values": self.singular_values.detach().cpu().contiguous(),
        }
        if self.coefficients is not None:
            tensors["coefficients"] = self.coefficients.detach().cpu().contiguous()
        metadata = {
            "format": FORMAT,
            "n_models": str(self.n_models),
            "total_variance": repr(float(self.total_variance)),
            "info": json.dumps(self.info),
        }
        if self.layout is not None:
            metadata["layout"] = self.layout.to_json()
        if self.names is not None:
            metadata["names"] = json.dumps(self.names)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> WeightSpace:
        """Load a space written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(
                    f"vision_kernels.weightspace.WeightSpace.load: {path} is not a saved weight space "
                    f"(format {metadata.get('format')!r})"
                )
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        return cls(
            mean=tensors["mean"],
            std=tensors["std"],
            basis=tensors["basis"],
            singular_values=tensors["singular_values"],
            n_models=int(metadata["n_models"]),
            total_variance=float(metadata["total_variance"]),
            layout=LoraLayout.from_json(metadata["layout"]) if "layout" in metadata else None,
            coefficients=tensors.get("coefficients"),
            names=json.loads(metadata["names"]) if "names" in metadata else None,
            info=json.loads(metadata.get("info", "{}")),
        )
