"""weights2weights: the weight space of LoRA-customized diffusion models.

Paper: Interpreting the Weight Space of Customized Diffusion Models (Dravid, Gandelsman, Wang,
Abdal, Wetzstein, Efros, Aberman, 2024). A customized model is the flat vector of its LoRA
weights (:class:`LoraLayout`); a dataset of them (:class:`LoraDataset`) is standardized per
dimension and reduced by PCA (:func:`fit_streaming`, :func:`fit_exact`) to a :class:`WeightSpace`
in which one can

* sample new models (:func:`sample_coefficients`),
* edit them along attribute directions (:func:`edit_direction`, :func:`apply_edit`,
  :class:`DelayedInjection`),
* invert a single image into a model (:func:`invert`),

and, at dataset scale (``vision-kernels w2w ...``, docs/w2w_runs.md), collect a folder of adapters
into resumable row-block shards (:func:`collect_adapters`, :func:`open_run_rows`), fit under
torchrun (:func:`fit_space`), sample, edit, invert and project from files (:mod:`.workflows`),

and export any point of the space as an adapter that diffusers and peft load as usual
(:meth:`WeightSpace.export_adapter`). The projection and reconstruction run on the
``pca_project`` / ``pca_reconstruct`` kernels of :mod:`vision_kernels.ops`.
"""

from __future__ import annotations

from .adapters import (
    LoraAdapter,
    attach_lora,
    load_vector_into,
    lora_config,
    lora_parameters,
    read_adapter,
    remove_lora,
    vector_from_unet,
    write_adapter,
)
from .collect import CollectResult, RunRows, collect_adapters, list_adapters, open_run_rows, read_attributes
from .dataset import LoraDataset
from .diffusion import (
    DelayedInjection,
    InversionResult,
    Latents,
    denoising_loss,
    encode_images,
    evaluate_denoising_loss,
    finetune_lora,
    generate_latents,
    invert,
    tiny_unet,
)
from .editing import apply_edit, edit_direction, edit_directions, edit_weights
from .fit import ColumnStatistics, column_statistics, fit_exact, fit_streaming, principal_angles
from .layout import LoraEntry, LoraLayout
from .sampling import sample_coefficients
from .space import WeightSpace
from .storage import ConcatRows, FileRows, MatrixWriter, RowMatrix, TensorRows, open_rows
from .workflows import edit_adapter, fit_space, invert_image, load_base_model, project_adapter, sample_adapters

__all__ = [
    "LoraEntry",
    "LoraLayout",
    "LoraAdapter",
    "read_adapter",
    "write_adapter",
    "lora_config",
    "attach_lora",
    "remove_lora",
    "lora_parameters",
    "load_vector_into",
    "vector_from_unet",
    "LoraDataset",
    "RowMatrix",
    "TensorRows",
    "FileRows",
    "ConcatRows",
    "MatrixWriter",
    "open_rows",
    "ColumnStatistics",
    "column_statistics",
    "fit_streaming",
    "fit_exact",
    "principal_angles",
    "WeightSpace",
    "sample_coefficients",
    "edit_direction",
    "edit_directions",
    "apply_edit",
    "edit_weights",
    "Latents",
    "encode_images",
    "denoising_loss",
    "finetune_lora",
    "invert",
    "InversionResult",
    "evaluate_denoising_loss",
    "DelayedInjection",
    "generate_latents",
    "tiny_unet",
    "CollectResult",
    "RunRows",
    "collect_adapters",
    "list_adapters",
    "open_run_rows",
    "read_attributes",
    "fit_space",
    "sample_adapters",
    "edit_adapter",
    "invert_image",
    "project_adapter",
    "load_base_model",
]
