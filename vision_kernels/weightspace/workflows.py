"""The weights2weights workflows behind ``vision-kernels w2w ...``: fit, sample, edit, invert, project.

Each takes paths and plain values, checks everything cheap (files, suffixes, layouts, attribute
names, the base model) before expensive work, writes every output atomically (an adapter folder
is built aside and swapped in whole, a file is written beside and renamed) and returns what it
wrote. :mod:`.cli` only parses arguments and prints.

* :func:`fit_space`: streaming randomized PCA of a collected run (or a weight-matrix file) to a
  ``space.safetensors`` (also under torchrun: every rank streams its own rows, rank 0 saves);
* :func:`sample_adapters`: ``count`` new models ``c ~ N(m_k, (scale s_k)^2)`` as adapter folders;
* :func:`edit_adapter`: ``w + strength * std * (V d)`` with ``d`` the attribute's edit direction
  fitted on the training models' coefficients (other attributes projected out);
* :func:`invert_image`: one image into the space through a diffusers base model;
* :func:`project_adapter`: the coordinates ``c = ((w - mean) / std) V`` of an adapter.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import atomic_folder, atomic_open
from .._optional import require
from .._progress import progress
from ..runs import distributed
from .adapters import DIFFUSERS_WEIGHTS, FORMATS, PEFT_WEIGHTS, write_adapter
from .collect import read_attributes
from .editing import edit_direction, edit_weights
from .fit import fit_streaming
from .layout import LoraLayout
from .sampling import sample_coefficients
from .space import WeightSpace
from .storage import open_rows

__all__ = [
    "fit_space",
    "load_space",
    "sample_adapters",
    "edit_adapter",
    "invert_image",
    "project_adapter",
    "load_base_model",
    "BaseModel",
]

_PREFIX = "vision_kernels.weightspace"


def load_space(space: str | os.PathLike[str] | WeightSpace, function: str) -> WeightSpace:
    """A WeightSpace from a path (validated load) or as given."""
    if isinstance(space, WeightSpace):
        return space
    path = Path(space)
    if not path.is_file():
        raise FileNotFoundError(
            f"{function}: argument 'space' must be a weight space file (from w2w fit), "
            + (f"got the folder {str(path)!r}" if path.is_dir() else f"{str(path)!r} does not exist")
        )
    return WeightSpace.load(path)


def _check_format(format: str, function: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"{function}: argument 'format' must be one of {FORMATS}, got {format!r}")


def _check_output_file(out: Path, suffix: str, function: str) -> None:
    if out.suffix != suffix:
        raise ValueError(f"{function}: argument 'out' must end in {suffix}, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"{function}: argument 'out' must be a file path, got the folder {str(out)!r}")
    parent = out.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{function}: argument 'out': the folder {str(parent)!r} does not exist")


def _check_adapter_out(out: Path, function: str) -> None:
    """An adapter output folder may be new, empty, or a previous adapter (replaced whole); never
    another folder of the user's (it would be swapped out and deleted)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{function}: argument 'out' must be a folder, got the file {str(out)!r}")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / PEFT_WEIGHTS).is_file() or (out / DIFFUSERS_WEIGHTS).is_file()):
            raise FileExistsError(
                f"{function}: argument 'out': {str(out)!r} is a non-empty folder that holds no adapter; "
                "choose a new folder (an existing adapter folder is replaced whole)"
            )
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{function}: argument 'out': the folder {str(out.parent)!r} does not exist")


def _write_adapter_folder(
    out: Path, vector: Tensor, layout: LoraLayout, format: str, note: dict[str, Any], function: str
) -> Path:
    """Write the adapter (and a ``w2w.json`` note) into a temporary folder and swap it in whole."""
    with atomic_folder(out, function=function) as temporary:
        write_adapter(temporary, vector, layout, format=format)
        (temporary / "w2w.json").write_text(json.dumps(note, indent=1))
    return out


# ---------------------------------------------------------------- fit


def fit_space(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    n_components: int,
    *,
    seed: int = 0,
    oversample: int = 10,
    n_iter: int = 4,
    memory: int = 2**31,
    gram_memory: int = 2**31,
    basis_dtype: torch.dtype = torch.float32,
    verify: bool = False,
    show_progress: bool | None = None,
) -> WeightSpace:
    """Fit a weight space to a ``w2w collect`` run folder (or a ``.safetensors``/``.npy`` weight
    matrix) with :func:`fit_streaming` and save it atomically to ``out`` (``.safetensors``).

    Under torch.distributed every rank calls it: each streams its own row blocks, the sums are
    all_reduced, every rank returns the same space and rank 0 writes the file. ``verify`` checks
    every shard's sha256 first (reads the whole run once more).
    """
    function = f"{_PREFIX}.fit_space"
    out = Path(out)
    _check_output_file(out, ".safetensors", function)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{function}: argument 'weights': {str(path)!r} does not exist")
    if path.is_dir():
        from .collect import open_run_rows

        rows: Any = open_run_rows(path, verify=verify)
    else:
        rows = open_rows(path)
    space = fit_streaming(
        rows,
        n_components,
        seed=seed,
        oversample=oversample,
        n_iter=n_iter,
        memory=memory,
        gram_memory=gram_memory,
        basis_dtype=basis_dtype,
        show_progress=show_progress,
    )
    ranks = distributed.current()
    if ranks.main:
        space.save(out)
    distributed.barrier()
    return space


# ---------------------------------------------------------------- sample


def sample_adapters(
    space: str | os.PathLike[str] | WeightSpace,
    count: int,
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    scale: float = 1.0,
    n_components: int | None = None,
    format: str = "peft",
    show_progress: bool | None = None,
) -> list[Path]:
    """``count`` new models drawn from the space (:func:`sample_coefficients`, seeded) written as
    adapter folders ``out/sample-000000``... that diffusers' ``load_lora_weights`` (``format="diffusers"``)
    or ``PeftModel.from_pretrained`` (``format="peft"``) load; ``out/samples.json`` lists their coordinates.
    Sample ``i`` is drawn with its own seed ``seed * 1000003 + i``, so it does not depend on ``count``."""
    function = f"{_PREFIX}.sample_adapters"
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise ValueError(f"{function}: argument 'count' must be a positive integer, got {count!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"{function}: argument 'seed' must be an integer >= 0, got {seed!r}")
    _check_format(format, function)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{function}: argument 'out' must be a folder, got the file {str(folder)!r}")
    if not folder.parent.is_dir():
        raise FileNotFoundError(f"{function}: argument 'out': the folder {str(folder.parent)!r} does not exist")
    loaded = load_space(space, function)
    layout = loaded._layout(function)
    # One generator per sample: sample i is the same whatever the count (a larger run extends a smaller one).
    coefficients = torch.cat(
        [
            sample_coefficients(
                loaded,
                1,
                scale=scale,
                n_components=n_components,
                generator=torch.Generator().manual_seed(seed * 1_000_003 + index),
            )
            for index in range(count)
        ]
    )  # [count, k]
    folder.mkdir(exist_ok=True)
    written = []
    for index in progress(range(count), desc="writing samples", enabled=show_progress):
        target = folder / f"sample-{index:06d}"
        note = {
            "kind": "sample",
            "seed": seed,
            "index": index,
            "scale": scale,
            "coefficients": coefficients[index].tolist(),
        }
        _write_adapter_folder(target, loaded.reconstruct(coefficients[index]), layout, format, note, function)
        written.append(target)
    with atomic_open(folder / "samples.json", "w", encoding="utf-8", function=function) as handle:
        json.dump(
            {"seed": seed, "scale": scale, "format": format, "samples": [p.name for p in written],
             "coefficients": coefficients.tolist()},
            handle,
        )  # fmt: skip
    return written


# ---------------------------------------------------------------- edit


def _labels(
    loaded: WeightSpace, attribute: str, attributes_csv: str | os.PathLike[str] | None, function: str
) -> dict[str, Tensor]:
    """``{attribute: [N] labels}`` of the training models (NaN where unknown), from the CSV when
    given (matched by model name) or else from the space."""
    if attributes_csv is not None:
        if loaded.names is None:
            raise ValueError(f"{function}: the space records no model names, so a CSV cannot be matched to its models")
        names, table = read_attributes(attributes_csv)
        unknown = [math.nan] * len(names)
        values = torch.tensor([table.get(n, unknown) for n in loaded.names], dtype=torch.float64)  # [N, A]
        labels = {name: values[:, i] for i, name in enumerate(names)}
        source = f"the attribute file {str(attributes_csv)!r}"
    else:
        labels = dict(loaded.attributes or {})
        source = "the space"
        if not labels:
            raise ValueError(
                f"{function}: the space holds no attributes: collect with --attributes CSV before fitting, "
                "or pass the CSV here (attributes_csv=... / --attributes)"
            )
    if attribute not in labels:
        raise ValueError(
            f"{function}: argument 'attribute': unknown attribute {attribute!r}; {source} has {sorted(labels)}"
        )
    return labels


def edit_adapter(
    space: str | os.PathLike[str] | WeightSpace,
    adapter: str | os.PathLike[str],
    attribute: str,
    strength: float,
    out: str | os.PathLike[str],
    *,
    attributes_csv: str | os.PathLike[str] | None = None,
    format: str = "peft",
) -> Path:
    """Edit an adapter along an attribute direction and write the result as an adapter folder.

    The direction ``d`` (``[K]``, unit) is fitted by :func:`edit_direction` on the coefficients of
    the training models whose label is known, the space's other attributes projected out (those
    known on the same models). The edited model is ``w + strength * std * (V d)``: the part of
    ``w`` outside the space is kept. ``strength`` is in coefficient units.
    """
    function = f"{_PREFIX}.edit_adapter"
    if not math.isfinite(strength):
        raise ValueError(f"{function}: argument 'strength' must be a finite number, got {strength!r}")
    _check_format(format, function)
    target = Path(out)
    _check_adapter_out(target, function)
    loaded = load_space(space, function)
    layout = loaded._layout(function)
    if loaded.coefficients is None:
        raise ValueError(f"{function}: the space holds no training coefficients, so no edit direction can be fitted")
    labels = _labels(loaded, attribute, attributes_csv, function)
    weights = loaded.adapter_vector(Path(adapter))  # checks the adapter's layout against the space
    known = torch.isfinite(labels[attribute])
    if int(known.sum()) < 2:
        raise ValueError(f"{function}: attribute {attribute!r} is known for {int(known.sum())} model(s); need >= 2")
    others = {
        name: values[known]
        for name, values in labels.items()
        if name != attribute and bool(torch.isfinite(values[known]).all()) and float(values[known].std()) > 0
    }
    direction = edit_direction(loaded.coefficients[known], labels[attribute][known], project_out=others or None)
    edited = edit_weights(loaded, weights, direction, strength)
    note = {
        "kind": "edit",
        "adapter": str(adapter),
        "attribute": attribute,
        "strength": strength,
        "projected_out": sorted(others),
        "coefficients_before": loaded.project(weights).tolist(),
        "coefficients_after": loaded.project(edited).tolist(),
    }
    return _write_adapter_folder(target, edited, layout, format, note, function)


# ---------------------------------------------------------------- project


def project_adapter(
    space: str | os.PathLike[str] | WeightSpace, adapter: str | os.PathLike[str], *, n_components: int | None = None
) -> dict[str, Any]:
    """``{"adapter", "n_components", "coefficients"}``: the adapter's coordinates in the space
    (ValueError naming the difference when the adapter's layout is not the space's)."""
    function = f"{_PREFIX}.project_adapter"
    loaded = load_space(space, function)
    coefficients = loaded.encode_adapter(Path(adapter), n_components)  # [k]
    return {"adapter": str(adapter), "n_components": int(coefficients.shape[-1]), "coefficients": coefficients.tolist()}


# ---------------------------------------------------------------- invert


@dataclass
class BaseModel:
    """What inversion needs from a base model: UNet, noise scheduler, image -> latents, prompt -> embeddings."""

    unet: torch.nn.Module
    scheduler: Any
    resolution: int
    vae: Any = None
    pipeline: Any = None
    cross_attention_dim: int = 768

    def latents(self, image: Tensor) -> Any:
        from .diffusion import encode_images

        if self.vae is None:
            return image  # a bare UNet works in pixel space
        return encode_images(self.vae, image)

    def prompt(self, text: str) -> Tensor:
        if self.pipeline is None:
            return torch.zeros(1, 1, self.cross_attention_dim)  # a bare UNet: unconditional
        embeddings, _ = self.pipeline.encode_prompt(text, self.unet.device, 1, False)
        return embeddings


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def load_base_model(base_model: str | os.PathLike[str], function: str = f"{_PREFIX}.load_base_model") -> BaseModel:
    """A diffusers pipeline folder (``model_index.json``: UNet, VAE, text encoder), a bare UNet folder
    (``config.json``, run in pixel space with an empty prompt: the tests' tiny UNets) or a model id
    of the Hugging Face hub. Raises FileNotFoundError (one line) when it cannot be found."""
    diffusers = require("diffusers", feature=function)
    require("peft", feature=function)
    text = str(base_model)
    path = _check_base_model(base_model, function)
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return _pipeline(diffusers, str(path), function)
        if (path / "config.json").is_file():
            unet = diffusers.UNet2DConditionModel.from_pretrained(str(path))
            scheduler_folder = path / "scheduler"
            scheduler = (
                diffusers.DDPMScheduler.from_pretrained(str(scheduler_folder))
                if scheduler_folder.is_dir()
                else diffusers.DDPMScheduler(num_train_timesteps=1000)
            )
            config: Any = unet.config
            if int(config.in_channels) != 3:
                raise ValueError(
                    f"{function}: argument 'base_model': {text!r} is a bare UNet with {config.in_channels} input "
                    "channels; without a VAE it must work on 3-channel images (give a pipeline folder instead)"
                )
            dim = config.cross_attention_dim
            return BaseModel(unet, scheduler, int(config.sample_size), cross_attention_dim=int(dim))
    return _pipeline(diffusers, text, function)


def _check_base_model(base_model: str | os.PathLike[str], function: str) -> Path:
    """Cheap check before any work: an existing model folder, or something that can be a hub model id."""
    text = str(base_model)
    path = Path(base_model).expanduser()
    if path.is_dir():
        if not ((path / "model_index.json").is_file() or (path / "config.json").is_file()):
            raise FileNotFoundError(
                f"{function}: argument 'base_model': the folder {text!r} holds neither a diffusers pipeline "
                "(model_index.json) nor a UNet (config.json)"
            )
        return path
    if path.exists() or not _HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{function}: argument 'base_model': no model folder {text!r}")
    return path


def _pipeline(diffusers: Any, name: str, function: str) -> BaseModel:
    try:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(name, safety_checker=None)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"{function}: argument 'base_model': cannot load {name!r} (not a local folder, and not a model id that "
            f"is cached or downloadable: {' '.join(str(error).split())[:200]})"
        ) from None
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return BaseModel(
        pipe.unet,
        pipe.scheduler,
        int(pipe.unet.config.sample_size) * factor,
        vae=pipe.vae,
        pipeline=pipe,
        cross_attention_dim=int(pipe.unet.config.cross_attention_dim),
    )


def read_image(path: str | os.PathLike[str], resolution: int, function: str) -> Tensor:
    """``[1, 3, resolution, resolution]`` in [-1, 1]: the image center-cropped to a square and resized."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{function}: argument 'image': no image file {str(path)!r}")
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{function}: argument 'image': cannot read {str(path)!r} as an image ({error})") from None
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(resolution, resolution, 3)
    return (pixels.permute(2, 0, 1).float() / 127.5 - 1).unsqueeze(0)


def invert_image(
    space: str | os.PathLike[str] | WeightSpace,
    image: str | os.PathLike[str],
    base_model: str | os.PathLike[str] | BaseModel,
    out: str | os.PathLike[str],
    *,
    steps: int = 400,
    lr: float = 0.1,
    n_components: int | None = None,
    prompt: str = "sks person",
    seed: int = 0,
    format: str = "peft",
    show_progress: bool | None = None,
) -> Path:
    """Invert one image into the space (:func:`invert`) on ``base_model`` and write the model found
    as an adapter folder (with ``w2w.json``: coefficients and the loss per step)."""
    function = f"{_PREFIX}.invert_image"
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"{function}: argument 'steps' must be a positive integer, got {steps!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"{function}: argument 'lr' must be a finite number > 0, got {lr!r}")
    _check_format(format, function)
    target = Path(out)
    _check_adapter_out(target, function)
    if not Path(image).is_file():
        raise FileNotFoundError(f"{function}: argument 'image': no image file {str(image)!r}")
    if not isinstance(base_model, BaseModel):
        _check_base_model(base_model, function)
    loaded = load_space(space, function)
    layout = loaded._layout(function)
    if n_components is not None and not 1 <= n_components <= loaded.n_components:
        raise ValueError(
            f"{function}: argument 'n_components' must be in [1, {loaded.n_components}], got {n_components}"
        )
    model = base_model if isinstance(base_model, BaseModel) else load_base_model(base_model, function)
    pixels = read_image(image, model.resolution, function)
    from .diffusion import invert

    latents = model.latents(pixels)
    embeddings = model.prompt(prompt)
    result = invert(
        loaded,
        model.unet,
        model.scheduler,
        latents,
        embeddings,
        n_components=n_components,
        steps=steps,
        lr=lr,
        seed=seed,
        show_progress=show_progress,
    )
    note = {
        "kind": "invert",
        "image": str(image),
        "base_model": str(base_model) if not isinstance(base_model, BaseModel) else "<BaseModel>",
        "steps": steps,
        "prompt": prompt,
        "coefficients": result.coefficients.tolist(),
        "losses": result.losses,
    }
    return _write_adapter_folder(target, loaded.reconstruct(result.coefficients), layout, format, note, function)
