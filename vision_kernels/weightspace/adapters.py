"""LoRA adapters on disk (diffusers and peft formats) and on a diffusers UNet.

Formats read and written:

* **peft**: a folder with ``adapter_model.safetensors`` (keys
  ``base_model.model.<module>.lora_A.weight``) and ``adapter_config.json``, as
  ``PeftModel.save_pretrained`` writes it; load with ``PeftModel.from_pretrained(unet, folder)``.
  The weights2weights dataset stores each model so, in ``<model>/unet/``.
* **diffusers**: a folder with ``pytorch_lora_weights.safetensors`` (keys
  ``unet.<module>.lora_A.weight``, the LoRA config in the file's ``lora_adapter_metadata``), as
  ``StableDiffusionPipeline.save_lora_weights`` writes it; load with
  ``pipe.load_lora_weights(folder)``.

Only UNet LoRAs on Linear layers (``lora_A``/``lora_B``, one rank) are supported; anything else
(text-encoder LoRAs, DoRA, biases, per-module rank or alpha patterns, kohya-style keys) is refused
with an error naming the key or setting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor

from .._files import atomic_open, atomic_path
from .._optional import require
from .layout import LoraLayout

__all__ = [
    "LoraAdapter",
    "read_adapter",
    "write_adapter",
    "lora_config",
    "attach_lora",
    "lora_parameter_names",
    "lora_parameters",
    "load_vector_into",
    "vector_from_unet",
    "remove_lora",
]

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
FORMATS = ("peft", "diffusers")

_KEY = re.compile(r"^(?P<prefix>base_model\.model\.|unet\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoraAdapter:
    """One adapter read from disk: its tensors by ``(module, part)``, its layout, where it came from."""

    tensors: dict[tuple[str, str], Tensor]
    layout: LoraLayout
    path: Path
    format: str

    def vector(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The adapter as a ``[D]`` vector in the canonical layout."""
        return self.layout.flatten(self.tensors, dtype)


def _locate(path: Path) -> tuple[Path, str]:
    """The weights file of an adapter folder (or file) and its format."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"vision_kernels.weightspace: adapter file {path} must be a .safetensors file")
        return path, "peft" if path.name == PEFT_WEIGHTS else "diffusers"
    if not path.is_dir():
        raise FileNotFoundError(f"vision_kernels.weightspace: no adapter at {path}")
    for candidate, fmt in (
        (path / PEFT_WEIGHTS, "peft"),
        (path / "unet" / PEFT_WEIGHTS, "peft"),
        (path / DIFFUSERS_WEIGHTS, "diffusers"),
    ):
        if candidate.is_file():
            return candidate, fmt
    raise FileNotFoundError(
        f"vision_kernels.weightspace: {path} holds no LoRA adapter: expected {PEFT_WEIGHTS} (+ {PEFT_CONFIG}), "
        f"unet/{PEFT_WEIGHTS} or {DIFFUSERS_WEIGHTS}"
    )


def _config_from_peft(config_file: Path) -> dict[str, Any]:
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"vision_kernels.weightspace: {config_file} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"vision_kernels.weightspace: {config_file} must hold a JSON object")
    return config


def _config_from_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    if not metadata or "lora_adapter_metadata" not in metadata:
        return {}
    try:
        packed = json.loads(metadata["lora_adapter_metadata"])
    except json.JSONDecodeError as error:
        raise ValueError(f"vision_kernels.weightspace: damaged 'lora_adapter_metadata' ({error})") from None
    if not isinstance(packed, dict):
        raise ValueError("vision_kernels.weightspace: 'lora_adapter_metadata' must be a JSON object")
    return {key[len("unet.") :]: value for key, value in packed.items() if key.startswith("unet.")}


def _check_config(config: Mapping[str, Any], source: str) -> None:
    def refuse(what: str) -> None:
        raise ValueError(
            f"vision_kernels.weightspace: {source} uses {what}, which a LoRA weight space does not support"
        )

    if config.get("peft_type", "LORA") != "LORA":
        refuse(f"peft_type {config.get('peft_type')!r}")
    if config.get("use_dora"):
        refuse("DoRA (use_dora=true)")
    if config.get("bias", "none") != "none":
        refuse(f"bias={config.get('bias')!r}")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        refuse("per-module rank_pattern/alpha_pattern")
    if config.get("modules_to_save"):
        refuse("modules_to_save")


def _read_tensors(weights_file: Path) -> tuple[dict[tuple[str, str], Tensor], dict[str, str] | None]:
    """``{(module, part): tensor}`` and the metadata of an adapter's weights file (keys checked)."""
    from safetensors import safe_open

    tensors: dict[tuple[str, str], Tensor] = {}
    with safe_open(str(weights_file), framework="pt") as handle:
        metadata = handle.metadata()
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.startswith("text_encoder"):
                raise ValueError(
                    f"vision_kernels.weightspace: {weights_file} holds text-encoder LoRA weights ('{key}'); "
                    "only UNet LoRAs are supported"
                )
            match = _KEY.match(key)
            if match is None:
                raise ValueError(
                    f"vision_kernels.weightspace: {weights_file}: unsupported key '{key}'; expected peft keys "
                    "'base_model.model.<module>.lora_A.weight' or diffusers keys 'unet.<module>.lora_A.weight'"
                )
            tensor = handle.get_tensor(key)
            if not tensor.is_floating_point():
                raise ValueError(
                    f"vision_kernels.weightspace: {weights_file}: '{key}' is {tensor.dtype}, not floating point"
                )
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"vision_kernels.weightspace: {weights_file}: '{key}' holds NaN or Inf weights")
            tensors[(match["module"], match["part"])] = tensor
    return tensors, metadata


def read_adapter(path: str | Path) -> LoraAdapter:
    """Read a LoRA adapter folder (peft or diffusers format, see the module docstring) or file.

    Raises ValueError for unsupported keys or settings and for NaN/Inf weights, naming the tensor.
    """
    from safetensors import SafetensorError

    weights_file, fmt = _locate(Path(path))
    try:
        tensors, metadata = _read_tensors(weights_file)
    except SafetensorError as error:
        raise ValueError(
            f"vision_kernels.weightspace: {weights_file} is not a readable safetensors file ({error})"
        ) from None
    config = _config_from_peft(weights_file.parent / PEFT_CONFIG) if fmt == "peft" else _config_from_metadata(metadata)
    _check_config(config, str(weights_file))
    alpha = config.get("lora_alpha")
    layout = LoraLayout.from_tensors(
        tensors,
        rank=config.get("r"),
        alpha=float(alpha) if alpha is not None else None,
        use_rslora=bool(config.get("use_rslora", False)),
        base_model=config.get("base_model_name_or_path"),
        source=str(weights_file),
    )
    return LoraAdapter(tensors, layout, Path(path), fmt)


def lora_config(layout: LoraLayout) -> Any:
    """A ``peft.LoraConfig`` that creates exactly the layout's modules (full names as targets)."""
    LoraConfig = require("peft", feature="vision_kernels.weightspace.lora_config").LoraConfig

    alpha: float | int = int(layout.alpha) if float(layout.alpha).is_integer() else layout.alpha
    return LoraConfig(
        r=layout.rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; a float alpha scales as alpha / r
        target_modules=list(layout.modules),
        use_rslora=layout.use_rslora,
        base_model_name_or_path=layout.base_model,
    )


def write_adapter(
    path: str | Path,
    vector: Tensor,
    layout: LoraLayout,
    *,
    format: str = "peft",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a ``[D]`` weight vector as a LoRA adapter folder that peft / diffusers load unchanged.

    ``format="peft"``: ``adapter_model.safetensors`` + ``adapter_config.json``
    (``PeftModel.from_pretrained(unet, path)``); ``format="diffusers"``:
    ``pytorch_lora_weights.safetensors`` with the config as metadata (``pipe.load_lora_weights(path)``).
    """
    from safetensors.torch import save_file

    if format not in FORMATS:
        raise ValueError(
            f"vision_kernels.weightspace.write_adapter: argument 'format' must be one of {FORMATS}, got {format!r}"
        )
    vector = vector.detach().to("cpu", dtype)
    if not bool(torch.isfinite(vector).all()):
        raise ValueError("vision_kernels.weightspace.write_adapter: argument 'vector' holds NaN or Inf")
    tensors = layout.unflatten(vector)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = lora_config(layout)
    function = "vision_kernels.weightspace.write_adapter"
    # Each file is written beside its final name and renamed (an existing adapter survives a crash).
    if format == "peft":
        state = {f"base_model.model.{m}.lora_{p}.weight": t.contiguous() for (m, p), t in tensors.items()}
        with atomic_path(folder / PEFT_WEIGHTS, function=function) as temporary:
            save_file(state, str(temporary), metadata={"format": "pt"})
        settings = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
        with atomic_open(folder / PEFT_CONFIG, "w", encoding="utf-8", function=function) as handle:
            handle.write(json.dumps(settings, indent=2, sort_keys=True))  # as peft's save_pretrained writes it
    else:
        loaders = require("diffusers.loaders", feature="vision_kernels.weightspace.write_adapter(format='diffusers')")
        StableDiffusionLoraLoaderMixin = loaders.StableDiffusionLoraLoaderMixin

        layers: dict[str, torch.nn.Module | Tensor] = {
            f"{m}.lora_{p}.weight": t.contiguous() for (m, p), t in tensors.items()
        }
        metadata = {k: v for k, v in config.to_dict().items() if v is not None}
        with atomic_path(folder / DIFFUSERS_WEIGHTS, function=function) as temporary:
            StableDiffusionLoraLoaderMixin.save_lora_weights(
                str(folder), unet_lora_layers=layers, unet_lora_adapter_metadata=metadata, weight_name=temporary.name
            )
    return folder


# ---------------------------------------------------------------- on a diffusers UNet


class PeftAdapters(Protocol):
    """The peft adapter methods diffusers models carry (``PeftAdapterMixin``), beyond ``nn.Module``."""

    def add_adapter(self, adapter_config: Any, adapter_name: str = ...) -> None: ...

    def set_adapter(self, adapter_name: str | list[str]) -> None: ...

    def delete_adapters(self, adapter_names: str | list[str]) -> None: ...


def peft_adapters(unet: torch.nn.Module) -> PeftAdapters:
    """``unet`` seen through its peft adapter methods (a diffusers model: ``UNet2DConditionModel``, ...)."""
    return cast(PeftAdapters, unet)


def lora_parameter_names(layout: LoraLayout, adapter_name: str) -> list[str]:
    """Parameter names of the layout's tensors on a model carrying the adapter, in layout order."""
    return [f"{e.module}.lora_{e.part}.{adapter_name}.weight" for e in layout.entries]


def attach_lora(unet: torch.nn.Module, layout: LoraLayout, *, adapter_name: str = "w2w") -> None:
    """Add an (untrained) LoRA adapter with exactly the layout's modules to ``unet`` (peft backend).

    Raises ValueError if the model does not have these modules with these shapes (a layout of
    another base model).
    """
    modules = dict(unet.named_modules())
    missing = [m for m in layout.modules if m not in modules]
    if missing:
        raise ValueError(
            f"vision_kernels.weightspace.attach_lora: the model has no module '{missing[0]}' "
            f"({len(missing)} of the layout's {len(layout.modules)} modules are missing): "
            "is it the base model the adapters were trained on?"
        )
    peft_adapters(unet).add_adapter(lora_config(layout), adapter_name=adapter_name)
    parameters = dict(unet.named_parameters())
    for entry, name in zip(layout.entries, lora_parameter_names(layout, adapter_name), strict=True):
        shape = tuple(parameters[name].shape)
        if shape != entry.shape:
            peft_adapters(unet).delete_adapters(adapter_name)
            raise ValueError(
                f"vision_kernels.weightspace.attach_lora: {entry.module}.lora_{entry.part} has shape {list(shape)} "
                f"on this model, the layout expects {list(entry.shape)}"
            )


def remove_lora(unet: torch.nn.Module, adapter_name: str = "w2w") -> None:
    """Remove an adapter added by :func:`attach_lora`."""
    peft_adapters(unet).delete_adapters(adapter_name)


def lora_parameters(vector: Tensor, layout: LoraLayout, adapter_name: str = "w2w") -> dict[str, Tensor]:
    """``{parameter name: view of vector}`` for ``torch.func.functional_call`` (keeps the autograd graph)."""
    views = layout.unflatten(vector)
    return {
        name: views[(e.module, e.part)]
        for e, name in zip(layout.entries, lora_parameter_names(layout, adapter_name), strict=True)
    }


@torch.no_grad()
def load_vector_into(unet: torch.nn.Module, vector: Tensor, layout: LoraLayout, adapter_name: str = "w2w") -> None:
    """Copy a ``[D]`` weight vector into the adapter's parameters (in place)."""
    parameters = dict(unet.named_parameters())
    for name, value in lora_parameters(vector, layout, adapter_name).items():
        parameters[name].copy_(value)


def vector_from_unet(unet: torch.nn.Module, layout: LoraLayout, adapter_name: str = "w2w") -> Tensor:
    """The adapter's current weights as a ``[D]`` float32 vector."""
    parameters = dict(unet.named_parameters())
    tensors = {
        (e.module, e.part): parameters[name]
        for e, name in zip(layout.entries, lora_parameter_names(layout, adapter_name), strict=True)
    }
    return layout.flatten(tensors)
