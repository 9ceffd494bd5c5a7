"""The fitted weights2weights space: mean, std, principal components, and the way back to adapters."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import atomic_path
from ..ops._checks import ArgCheck
from ..ops.pca_project import pca_project, pca_reconstruct
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
        attributes: ``{name: [N] float64}`` per-model attribute values of the training models
            (NaN where unknown), from which edit directions are fitted; or None.
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
    attributes: dict[str, Tensor] | None = None

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
        for name, values in (self.attributes or {}).items():
            check.shape(values, f"attributes[{name!r}]", (self.n_models,), "[N]")

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
        for name, values in (self.attributes or {}).items():
            tensors[_ATTRIBUTE + name] = values.detach().to("cpu", torch.float64).contiguous()
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
        if path.suffix != ".safetensors":
            raise ValueError(
                "vision_kernels.weightspace.WeightSpace.save: argument 'path' must end in .safetensors, "
                f"got {str(path)!r}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target, fsync'ed and renamed: the previous file survives a crash or a
        # SIGKILL, and a killed save's temporary is removed by the next save into this folder.
        with atomic_path(path, function="vision_kernels.weightspace.WeightSpace.save") as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> WeightSpace:
        """Load a space written by :meth:`save`.

        Nothing in the file is trusted: a file that is not a readable safetensors file, a missing or
        extra tensor, a dtype or shape that disagrees with the metadata (``n_models``, the layout's
        dimension, the number of components) or damaged metadata raises one ValueError naming the
        file and the field.
        """
        from safetensors import SafetensorError, safe_open

        function = "vision_kernels.weightspace.WeightSpace.load"
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{function}: no weight space file {str(path)!r}" + (" (it is a folder)" if path.is_dir() else "")
            )

        def fail(field: str, message: str) -> ValueError:
            return ValueError(f"{function}: {str(path)!r}: field '{field}' {message}")

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise ValueError(
                        f"{function}: {str(path)!r} is not a saved weight space (format {metadata.get('format')!r})"
                    )
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except SafetensorError as error:
            raise ValueError(f"{function}: {str(path)!r} is not a readable safetensors file ({error})") from None
        except OSError as error:
            raise ValueError(f"{function}: cannot read {str(path)!r} ({error})") from None
        fields = _checked_fields(tensors, metadata, fail)
        try:
            space = cls(**fields)
        except ValueError as error:  # e.g. a non-finite mean or a zero std in the file
            raise ValueError(f"{function}: {str(path)!r}: {error}") from None
        return space.to(device) if torch.device(device).type != "cpu" else space


_ATTRIBUTE = "attribute."
_REQUIRED = ("mean", "std", "basis", "singular_values")


def _checked_fields(tensors: dict[str, Tensor], metadata: dict[str, str], fail: Any) -> dict[str, Any]:
    """The constructor arguments of a saved space, each checked against the others and the metadata."""
    for name in _REQUIRED:
        if name not in tensors:
            raise fail(name, "is missing")
    known = {*_REQUIRED, "coefficients"}
    for name in tensors:
        if name not in known and not name.startswith(_ATTRIBUTE):
            raise fail(name, "is not a weight-space tensor")
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise fail(name, f"must be a floating-point tensor, got {tensor.dtype}")
    basis = tensors["basis"]
    if basis.dim() != 2 or basis.shape[1] == 0:
        raise fail("basis", f"must be a [D, K] matrix with K >= 1, got shape {list(basis.shape)}")
    dims, components = (int(s) for s in basis.shape)
    try:
        n_models = int(metadata["n_models"])
        total_variance = float(metadata["total_variance"])
    except KeyError as error:
        raise fail(str(error.args[0]), "is missing from the metadata") from None
    except ValueError:
        raise fail("n_models/total_variance", "must be numbers in the metadata") from None
    if n_models < 2:
        raise fail("n_models", f"must be >= 2, got {n_models}")
    if not (math.isfinite(total_variance) and total_variance > 0):
        raise fail("total_variance", f"must be a finite number > 0, got {total_variance}")
    expected = {
        "mean": (dims,),
        "std": (dims,),
        "singular_values": (components,),
        "coefficients": (n_models, components),
    }
    for name, shape in expected.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise fail(name, f"must have shape {list(shape)} (from basis {list(basis.shape)} and n_models), "
                       f"got {list(tensors[name].shape)}")  # fmt: skip
    try:
        layout = LoraLayout.from_json(metadata["layout"]) if "layout" in metadata else None
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise fail("layout", f"is damaged ({error})") from None
    if layout is not None and layout.dim != dims:
        raise fail("layout", f"describes {layout.dim} dimensions, the basis has {dims}")
    try:
        names = json.loads(metadata["names"]) if "names" in metadata else None
        info = json.loads(metadata.get("info", "{}"))
    except json.JSONDecodeError as error:
        raise fail("names/info", f"is not valid JSON ({error})") from None
    if names is not None and (not isinstance(names, list) or len(names) != n_models):
        raise fail("names", f"must be a list of {n_models} names, got {type(names).__name__} of {len(names)}")
    if not isinstance(info, dict):
        raise fail("info", "must be a JSON object")
    attributes = {}
    for key, values in tensors.items():
        if key.startswith(_ATTRIBUTE):
            if tuple(values.shape) != (n_models,):
                raise fail(key, f"must have shape [{n_models}], got {list(values.shape)}")
            attributes[key[len(_ATTRIBUTE) :]] = values.double()
    return dict(
        mean=tensors["mean"],
        std=tensors["std"],
        basis=basis,
        singular_values=tensors["singular_values"],
        n_models=n_models,
        total_variance=total_variance,
        layout=layout,
        coefficients=tensors.get("coefficients"),
        names=[str(n) for n in names] if names is not None else None,
        info=info,
        attributes=attributes or None,
    )
