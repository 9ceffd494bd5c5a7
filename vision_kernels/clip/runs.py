"""Dataset-scale CLIP decomposition runs: sharded, resumable, distributed (the ``vision-kernels clip`` commands).

:func:`decompose_run` streams an image source (:mod:`vision_kernels.clip.data`) through
:func:`~vision_kernels.clip.decompose` and writes a :mod:`vision_kernels.runs` folder. Shard ``k``
holds, for the readable images among inputs ``[k * S, (k + 1) * S)``, the exact decomposition

    output = sum_{l in layers, h} heads[:, l, h] + other_heads + sum_l mlps[:, l] + embedding + bias

(``heads`` ``[n, Lsel, H, E]``, ``[n, Lsel, H, N, E]`` with ``per_token``), stored as safetensors with
the image indices (``index``) and class labels (``label``, -1 without). Every rank computes the
shards ``k % world == rank`` with batches starting at the shard's first image, so the files do not
depend on the number of ranks, and a rerun resumes after the complete shards (byte-identical).

The analyses read such a run shard by shard (each rank its own shards) and reduce sums over
images with ``all_reduce`` (rows are never gathered):

* :func:`textspan_run`: per-head Gram matrices ``sum_i x_i x_i^T`` and sums ``sum_i x_i`` (float64)
  feed the covariance form of :func:`~vision_kernels.clip.text_span`.
* :func:`ablate_run`: means of every term (pass 1), then zero-shot accuracy of
  :func:`~vision_kernels.clip.mean_ablate`'d embeddings (pass 2), as the paper's ablation table.

:func:`segment_run` (zero-shot segmentation scores over an image/mask folder pair) is in
:mod:`vision_kernels.clip.segment_run`.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import _progress
from .._files import atomic_open, file_sha256
from ..runs import RunReader, RunSpec, ShardedRun, distributed
from ._checks import check_convention
from .data import ImageSource, image_batches, model_transform, open_image_source
from .decompose import Decomposition, decompose, normalize_layers
from .index import model_identity
from .models import LoadedClip, load_clip
from .towers import as_vision_tower

__all__ = [
    "KIND",
    "STORAGE_DTYPES",
    "ModelChoice",
    "check_model_name",
    "load_model",
    "decompose_run",
    "DecomposeRun",
    "parse_heads",
    "textspan_run",
    "ablate_run",
    "ablation_reference",
]

KIND = "clip.decompose"
STORAGE_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
}
_DTYPE_NAMES = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}
TERMS = ("heads", "other_heads", "mlps", "embedding", "bias", "output")


# -- models -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    """Which model a run uses: an open_clip name (or an open_clip config ``.json`` file, or ``hf:<id>``),
    pretrained weights (open_clip tag), or a ``checkpoint`` file, else random weights drawn with ``seed``."""

    name: str
    pretrained: str | None = None
    checkpoint: str | None = None
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        checkpoint = None
        if self.checkpoint is not None:
            checkpoint = {"path": str(Path(self.checkpoint).resolve()), "sha256": file_sha256(self.checkpoint)}
        weights = "pretrained" if self.pretrained else "checkpoint" if self.checkpoint else "random"
        name = self.name
        if name.lower().endswith(".json"):  # a config file: found again from any working folder
            name = str(Path(name).resolve())
        return {
            "name": name,
            "pretrained": self.pretrained,
            "checkpoint": checkpoint,
            "seed": self.seed if weights == "random" else None,
            "weights": weights,
        }


def check_model_name(choice: ModelChoice, function: str) -> None:
    """Check the model name, tag and checkpoint before anything is loaded (one-line errors)."""
    if choice.pretrained is not None and choice.checkpoint is not None:
        raise ValueError(f"{function}: give --pretrained or --checkpoint, not both")
    if choice.checkpoint is not None and not Path(choice.checkpoint).is_file():
        raise FileNotFoundError(f"{function}: argument 'checkpoint': no such file {choice.checkpoint!r}")
    if choice.name.startswith("hf:"):
        if choice.checkpoint is not None:
            raise ValueError(f"{function}: --checkpoint works with open_clip models, got {choice.name!r}")
        return
    if choice.name.lower().endswith(".json"):
        if not Path(choice.name).is_file():
            raise FileNotFoundError(f"{function}: argument 'model': no such open_clip config file {choice.name!r}")
        if choice.pretrained is not None:
            raise ValueError(f"{function}: a model config file has no pretrained tags; use --checkpoint FILE")
        return
    from .._optional import require

    open_clip = require("open_clip", feature=function)
    known = open_clip.list_models()
    if choice.name not in known:
        close = difflib.get_close_matches(choice.name, known, n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else "; see open_clip.list_models()"
        raise ValueError(f"{function}: argument 'model': unknown open_clip model {choice.name!r}{hint}")
    if choice.pretrained is not None:
        tags = open_clip.list_pretrained_tags_by_model(choice.name)
        if choice.pretrained not in tags:
            raise ValueError(
                f"{function}: argument 'pretrained': {choice.name} has no weights tagged {choice.pretrained!r}; "
                f"tags: {', '.join(tags) or 'none'}"
            )


def _read_checkpoint(path: str, function: str) -> dict[str, Tensor]:
    state: Any
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception as error:  # noqa: BLE001 - a damaged file: one clear message
            raise ValueError(f"{function}: cannot read checkpoint {path!r} as safetensors ({error})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged or pickled-object file: one clear message
            raise ValueError(f"{function}: cannot read checkpoint {path!r} as tensors ({error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{function}: checkpoint {path!r} must hold a state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def load_model(choice: ModelChoice, *, device: str | torch.device = "cpu", function: str) -> LoadedClip:
    """Build the model of ``choice`` (checked with :func:`check_model_name` first)."""
    check_model_name(choice, function)
    name = choice.name
    if name.lower().endswith(".json"):
        import open_clip

        open_clip.add_model_config(name)
        name = Path(name).stem
    if choice.pretrained is None and not name.startswith("hf:"):
        torch.manual_seed(choice.seed)  # random weights: the same for every rank and every rerun
    loaded = load_clip(name, choice.pretrained, device=device)
    if choice.checkpoint is not None:
        state = _read_checkpoint(choice.checkpoint, function)
        missing, unexpected = loaded.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{function}: checkpoint {choice.checkpoint!r} does not fit {choice.name}: {len(missing)} missing "
                f"keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
        loaded.model.eval()
    return loaded


# -- decompose --------------------------------------------------------------------------------------


def _positive(value: object, name: str, function: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{function}: argument '{name}' must be a positive integer, got {value!r}")
    return value


def decompose_run(
    out: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    model: str | ModelChoice,
    layers: Sequence[int] | None = None,
    per_token: bool = False,
    dtype: str = "float16",
    convention: str = "per_term",
    normalize: bool = False,
    batch_size: int = 64,
    workers: int = 2,
    shard_size: int = 1024,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Decompose every image of ``images`` into a sharded run folder ``out``; returns its manifest path.

    Resumes an unfinished run with the same settings; refuses a folder holding another run unless
    ``overwrite``. Under torchrun every rank computes its own shards. Unreadable images are skipped
    and listed in their shard's record (and counted in the manifest's ``extra.failed_count``).

    Raises:
        ValueError / FileNotFoundError / IndexError: bad arguments, unknown model or layer, a source
        without images (all checked before the model is loaded, except layers); FileExistsError:
        ``out`` holds another run.
    """
    function = "vision_kernels.clip.decompose_run"
    choice = model if isinstance(model, ModelChoice) else ModelChoice(str(model))
    check_model_name(choice, function)
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"{function}: argument 'dtype' must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    check_convention(convention, function)
    _positive(batch_size, "batch_size", function)
    _positive(shard_size, "shard_size", function)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"{function}: argument 'workers' must be an integer >= 0, got {workers!r}")
    if layers is not None and any(not isinstance(v, int) or isinstance(v, bool) for v in layers):
        raise TypeError(f"{function}: argument 'layers' must hold integers, got {list(layers)!r}")
    storage = STORAGE_DTYPES[dtype]
    source = open_image_source(images)
    ranks = distributed.init_from_env(device)
    loaded = load_model(choice, device=device, function=function)
    tower = as_vision_tower(loaded.model)
    layer_list = normalize_layers(layers, tower.num_layers, function)
    options = {
        "model": choice.describe(),
        "fingerprint": model_identity(loaded.model, choice.name).fingerprint,
        "layers": layer_list,
        "num_layers": tower.num_layers,
        "heads": tower.heads,
        "tokens": tower.num_tokens,
        "grid": list(tower.grid_size),
        "embed_dim": int(tower.final_norm().proj.shape[1]),
        "per_token": bool(per_token),
        "convention": convention,
        "normalize": bool(normalize),
        "dtype": _DTYPE_NAMES[storage],
        "batch_size": batch_size,
        "device": torch.device(device).type,
        "source": {"kind": source.kind, "classes": list(source.classes)},
    }
    run = ShardedRun(out, RunSpec(KIND, options, source.keys, shard_size), overwrite=overwrite, function=function)
    pending = run.pending()
    ok = True
    try:
        _decompose_shards(run, pending, source, loaded, options, storage, batch_size, workers, device)
    except BaseException:
        ok = False
        raise
    finally:
        if not distributed.all_ranks_ok(ok) and ok:
            raise RuntimeError(f"{function}: another rank failed (see its message); rerun the command to resume")
    failed = 0
    if ranks.main:
        failed = sum(len((run.record(s.index) or {}).get("record", {}).get("failed", [])) for s in run.shards)
    manifest = run.finalize({"source": source.describe(), "failed_count": failed})
    failed = distributed.broadcast_object(failed)
    if failed == len(source):
        first = next(f for s in run.shards for f in (run.record(s.index) or {}).get("record", {}).get("failed", []))
        raise ValueError(
            f"{function}: argument 'images': none of the {len(source)} images of {str(images)!r} could be read or "
            f"preprocessed (first: {first[1]!r}: {first[2]})"
        )
    if ranks.main:
        done = len(source) - failed
        distributed.log(
            f"clip decompose: {done} images decomposed into {len(run.shards)} shards in {str(run.folder)!r}"
            + (f"; {failed} unreadable images skipped (listed in manifest.json)" if failed else "")
        )
    return manifest


def _empty_terms(options: dict[str, Any], storage: torch.dtype) -> dict[str, Tensor]:
    e, h = options["embed_dim"], options["heads"]
    head_shape = [0, len(options["layers"]), h] + ([options["tokens"]] if options["per_token"] else []) + [e]
    return {
        "heads": torch.zeros(head_shape, dtype=storage),
        "other_heads": torch.zeros(0, e, dtype=storage),
        "mlps": torch.zeros(0, options["num_layers"], e, dtype=storage),
        "embedding": torch.zeros(0, e, dtype=storage),
        "bias": torch.zeros(0, e, dtype=storage),
        "output": torch.zeros(0, e, dtype=storage),
    }


def _decompose_shards(
    run: ShardedRun,
    pending: list[Any],
    source: ImageSource,
    loaded: LoadedClip,
    options: dict[str, Any],
    storage: torch.dtype,
    batch_size: int,
    workers: int,
    device: str,
) -> None:
    groups = [range(shard.start, shard.stop) for shard in pending]
    total = sum(-(-len(g) // batch_size) for g in groups)
    batches = image_batches(source, model_transform(loaded), groups, batch_size=batch_size, workers=workers)
    parts: list[dict[str, Tensor]] = []
    failed: list[list[Any]] = []
    current = 0

    def flush(group: int) -> None:
        tensors = {n: torch.cat([p[n] for p in parts]) for n in parts[0]} if parts else None
        if tensors is None:
            tensors = {"index": torch.zeros(0, dtype=torch.int64), "label": torch.zeros(0, dtype=torch.int64)}
            tensors.update(_empty_terms(options, storage))
        run.write(pending[group], tensors, record={"failed": failed, "count": int(tensors["index"].shape[0])})

    for batch in _progress.progress(batches, desc="clip decompose", total=total):
        if batch.group != current:
            flush(current)
            parts, failed, current = [], [], batch.group
        failed += [[index, source.keys[index], reason] for index, reason in batch.failed]
        if batch.indices.numel() == 0:
            continue
        result = decompose(
            loaded.model,
            batch.images.to(device),
            layers=options["layers"],
            per_token=options["per_token"],
            convention=options["convention"],
            normalize=options["normalize"],
            dtype=storage,
            keep_capture=False,
        )
        parts.append({"index": batch.indices, "label": batch.labels, **{n: getattr(result, n).cpu() for n in TERMS}})
    if pending:
        flush(current)


# -- reading a run ------------------------------------------------------------------------------------


class DecomposeRun:
    """A finished ``clip decompose`` run, read shard by shard with every shard checked before use."""

    def __init__(self, folder: str | os.PathLike[str], function: str) -> None:
        self.function = function
        self.reader = RunReader.open(folder, kind=KIND, function=function)
        self.options = self.reader.options
        try:
            self.layers = [int(v) for v in self.options["layers"]]
            self.storage = STORAGE_DTYPES[self.options["dtype"]]
            self.heads, self.embed_dim = int(self.options["heads"]), int(self.options["embed_dim"])
            self.num_layers, self.per_token = int(self.options["num_layers"]), bool(self.options["per_token"])
            self.tokens = int(self.options["tokens"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{function}: {str(folder)!r}: run.json option {error} is missing or damaged") from None

    @property
    def folder(self) -> Path:
        return self.reader.folder

    def model_choice(self) -> ModelChoice:
        model = self.options["model"]
        checkpoint = model.get("checkpoint")
        return ModelChoice(
            model["name"], model.get("pretrained"), checkpoint["path"] if checkpoint else None, model.get("seed") or 0
        )

    def load_model(self, device: str = "cpu") -> LoadedClip:
        """The run's model, checked against the run's weight fingerprint."""
        choice = self.model_choice()
        loaded = load_model(choice, device=device, function=self.function)
        if model_identity(loaded.model, choice.name).fingerprint != self.options["fingerprint"]:
            raise ValueError(
                f"{self.function}: the weights of {choice.name} loaded now differ from those of the run in "
                f"{str(self.folder)!r} (fingerprint mismatch)"
            )
        return loaded

    def mine(self) -> list[int]:
        """Indices of the shards this rank reads."""
        return distributed.owned(list(range(len(self.reader.shards))))

    def shard(self, index: int) -> dict[str, Tensor]:
        """Shard ``index``'s tensors after checking checksum, names, dtypes and shapes against the run."""
        info = self.reader.shards[index]
        tensors = self.reader.read(index, verify=True)
        where = f"{self.function}: shard {index} of {str(self.folder)!r}"
        expected = {"index", "label", *TERMS}
        if set(tensors) != expected:
            raise ValueError(f"{where} holds tensors {sorted(tensors)}, expected {sorted(expected)}")
        n = tensors["index"].shape[0]
        e, h, lsel = self.embed_dim, self.heads, len(self.layers)
        shapes = {
            "index": [n],
            "label": [n],
            "heads": [n, lsel, h] + ([self.tokens] if self.per_token else []) + [e],
            "other_heads": [n, e],
            "mlps": [n, self.num_layers, e],
            "embedding": [n, e],
            "bias": [n, e],
            "output": [n, e],
        }
        for name, shape in shapes.items():
            dtype = torch.int64 if name in ("index", "label") else self.storage
            if list(tensors[name].shape) != shape or tensors[name].dtype != dtype:
                raise ValueError(
                    f"{where}: tensor {name!r} is {tensors[name].dtype} {list(tensors[name].shape)}, "
                    f"expected {dtype} {shape}"
                )
        positions = tensors["index"]
        if n and (
            int(positions.min()) < info.start
            or int(positions.max()) >= info.stop
            or bool((positions.diff() <= 0).any())
        ):
            raise ValueError(f"{where}: image indices are not increasing inside [{info.start}, {info.stop})")
        return tensors

    def decomposition(self, tensors: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> Decomposition:
        """A shard's tensors as a :class:`~vision_kernels.clip.Decomposition` (terms converted to ``dtype``)."""
        axes = ("image", "layer", "head") + (("token",) if self.per_token else ()) + ("dim",)
        grid = self.options.get("grid", [0, 0])
        return Decomposition(
            heads=tensors["heads"].to(dtype),
            head_axes=axes,
            layers=tuple(self.layers),
            other_heads=tensors["other_heads"].to(dtype),
            mlps=tensors["mlps"].to(dtype),
            embedding=tensors["embedding"].to(dtype),
            bias=tensors["bias"].to(dtype),
            output=tensors["output"].to(dtype),
            convention=str(self.options["convention"]),
            normalized=bool(self.options["normalize"]),
            grid=(int(grid[0]), int(grid[1])),
        )

    def head_terms(self, tensors: dict[str, Tensor]) -> Tensor:
        """Head terms summed over tokens, float64 ``[n, Lsel, H, E]``."""
        heads = tensors["heads"].double()
        return heads.sum(3) if self.per_token else heads


def parse_heads(text: str | None, run: DecomposeRun, function: str) -> list[tuple[int, int]]:
    """``"last4"`` (every head of the last 4 layers of the model), ``"all"`` (every decomposed head) or
    ``"L.H,L.H,..."`` (model layer indices, negative from the end) -> ``(layer, head)`` pairs, all decomposed."""
    text = (text or "last4").strip()
    if text == "all":
        return [(layer, head) for layer in run.layers for head in range(run.heads)]
    if text.startswith("last"):
        try:
            count = int(text[4:])
        except ValueError:
            count = 0
        if not 0 < count <= run.num_layers:
            raise ValueError(f"{function}: argument 'heads': {text!r} must be last<k> with 1 <= k <= {run.num_layers}")
        layers = list(range(run.num_layers - count, run.num_layers))
        pairs = [(layer, head) for layer in layers for head in range(run.heads)]
    else:
        pairs = []
        for item in text.split(","):
            layer_text, dot, head_text = item.strip().partition(".")
            try:
                layer, head = int(layer_text), int(head_text)
            except ValueError:
                raise ValueError(
                    f"{function}: argument 'heads' must be 'last<k>', 'all' or 'L.H,L.H,...', got item {item!r}"
                ) from None
            if not dot or not -run.num_layers <= layer < run.num_layers or not 0 <= head < run.heads:
                raise ValueError(
                    f"{function}: argument 'heads': {item!r} is outside the model's {run.num_layers} layers x "
                    f"{run.heads} heads"
                )
            pairs.append((layer % run.num_layers, head))
    missing = sorted({layer for layer, _ in pairs if layer not in run.layers})
    if missing:
        raise ValueError(
            f"{function}: argument 'heads' asks for layers {missing} that the run did not decompose "
            f"(it has layers {run.layers}); rerun clip decompose with --layers"
        )
    return list(dict.fromkeys(pairs))


# -- TextSpan ------------------------------------------------------------------------------------------


def _head_moments(run: DecomposeRun, pairs: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """``(gram [P, E, E], total [P, E], count [1])`` over every image, float64, summed over ranks."""
    positions = torch.tensor([run.layers.index(layer) for layer, _ in pairs])
    heads = torch.tensor([head for _, head in pairs])
    e = run.embed_dim
    gram = torch.zeros(len(pairs), e, e, dtype=torch.float64)
    total = torch.zeros(len(pairs), e, dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.float64)
    for index in _progress.progress(run.mine(), desc="TextSpan statistics"):
        x = run.head_terms(run.shard(index))[:, positions, heads]  # [n, P, E]
        gram += torch.einsum("npe,npf->pef", x, x)
        total += x.sum(0)
        count += x.shape[0]
    for tensor in (gram, total, count):
        distributed.all_reduce_sum(tensor)
    return gram, total, count


def textspan_run(
    run_folder: str | os.PathLike[str],
    texts: str | os.PathLike[str],
    *,
    heads: str | None = "last4",
    k: int = 10,
    rank: int = 80,
    out: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> dict[str, Path]:
    """TextSpan of the chosen heads of a ``clip decompose`` run, written as Markdown, HTML and JSON.

    Each head's Gram matrix and mean are accumulated streaming from the shards (every rank its
    shards, then ``all_reduce``) and handed to the covariance form of
    :func:`~vision_kernels.clip.text_span` (the same greedy steps). ``texts`` is a text-bank file
    or a shipped bank name (:func:`~vision_kernels.clip.available_text_banks`). Reports go to ``out``
    (default: the run folder) as ``textspan.md``, ``textspan.html``, ``textspan.json``.
    """
    from .texts import encode_texts, load_text_bank
    from .textspan import _covariance_steps, _single_thread

    function = "vision_kernels.clip.textspan_run"
    _positive(k, "k", function)
    _positive(rank, "rank", function)
    run = DecomposeRun(run_folder, function)
    pairs = parse_heads(heads, run, function)
    bank = load_text_bank(Path(texts))
    out_folder = Path(out) if out is not None else run.folder
    if not out_folder.is_dir():
        raise FileNotFoundError(f"{function}: argument 'out': no such folder {str(out_folder)!r}")
    distributed.init_from_env(device)
    loaded = run.load_model(device)
    embeddings = encode_texts(loaded.model, bank, tokenizer=loaded.tokenizer).double().cpu()  # [M, E]
    gram, total, count = _head_moments(run, pairs)
    images = int(count.item())
    if images < 2:
        raise ValueError(
            f"{function}: the run in {str(run.folder)!r} holds {images} decomposed images; TextSpan needs 2"
        )
    results = []
    with _single_thread(torch.device("cpu")):
        for p, (layer, head) in enumerate(_progress.progress(pairs, desc="TextSpan heads")):
            r = max(1, min(rank, images, run.embed_dim))
            mean = total[p] / images
            indices, explained, _, _, variance, used = _covariance_steps(
                gram[p], mean, images, embeddings, k, r, 1e-6, 1e-12
            )
            results.append(
                {
                    "layer": layer,
                    "head": head,
                    "texts": [bank[i] for i in indices],
                    "indices": indices,
                    "explained_variance": [float(v) for v in explained],
                    "projected_variance": [float(v) for v in variance],
                    "rank": used,
                }
            )
    report = {"run": str(run.folder.resolve()), "texts": str(texts), "images": images, "k": k, "heads": results}
    paths = {
        "json": out_folder / "textspan.json",
        "md": out_folder / "textspan.md",
        "html": out_folder / "textspan.html",
    }
    if distributed.current().main:
        with atomic_open(paths["json"], "w", encoding="utf-8", function=function) as handle:
            json.dump(report, handle, indent=1)
        with atomic_open(paths["md"], "w", encoding="utf-8", function=function) as handle:
            handle.write(_textspan_markdown(report))
        with atomic_open(paths["html"], "w", encoding="utf-8", function=function) as handle:
            handle.write(_textspan_html(report))
    distributed.barrier()
    return paths


def _textspan_markdown(report: dict[str, Any]) -> str:
    lines = [f"# TextSpan: {report['images']} images, text bank {report['texts']}", ""]
    for entry in report["heads"]:
        lines += [f"## Layer {entry['layer']}, head {entry['head']}", "", "| # | text | explained variance |"]
        lines.append("|---|---|---|")
        for n, (text, value) in enumerate(zip(entry["texts"], entry["explained_variance"], strict=True), 1):
            cell = text.replace("|", "\\|")
            lines.append(f"| {n} | {cell} | {value:.3f} |")
        lines.append("")
    return "\n".join(lines)


def _textspan_html(report: dict[str, Any]) -> str:
    from html import escape

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>TextSpan</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>",
        f"<h1>TextSpan: {report['images']} images, text bank {escape(str(report['texts']))}</h1>",
    ]
    for entry in report["heads"]:
        parts.append(f"<h2>Layer {entry['layer']}, head {entry['head']}</h2>")
        parts.append("<table><tr><th>#</th><th>text</th><th>explained variance</th></tr>")
        for n, (text, value) in enumerate(zip(entry["texts"], entry["explained_variance"], strict=True), 1):
            parts.append(f"<tr><td>{n}</td><td>{escape(text)}</td><td>{value:.3f}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- mean-ablation ---------------------------------------------------------------------------------------


def _ablations(run: DecomposeRun, heads: list[tuple[int, int]]) -> list[tuple[str, dict[str, Any]]]:
    """The paper's ablation table rows: name -> :func:`mean_ablate` arguments."""
    rows: list[tuple[str, dict[str, Any]]] = [("none", {})]
    rows.append(("all MLPs", {"mlps": "all"}))
    for last in range(run.num_layers):
        rows.append((f"MLPs 0-{last}", {"mlps": list(range(last + 1))}))
    decomposed = sorted(run.layers)
    for position, layer in enumerate(decomposed):
        rows.append((f"attention layers {decomposed[0]}-{layer}", {"layers": decomposed[: position + 1]}))
    if heads:
        rows.append(("heads " + ",".join(f"{a}.{b}" for a, b in heads), {"heads": heads}))
    return rows


def ablation_reference(run: DecomposeRun) -> Decomposition:
    """The mean of every term over all images of ``run`` as a one-row float64 decomposition (the
    ``reference`` of :func:`~vision_kernels.clip.mean_ablate`): each rank sums its shards, ``all_reduce``."""
    sums: dict[str, Tensor] = {
        name: torch.zeros(shape, dtype=torch.float64) for name, shape in _term_shapes(run).items()
    }
    count = torch.zeros(1, dtype=torch.float64)
    for index in _progress.progress(run.mine(), desc="ablation means"):
        tensors = run.shard(index)
        for name in TERMS:
            sums[name] += tensors[name].double().sum(0)
        count += tensors["index"].shape[0]
    for name in TERMS:
        distributed.all_reduce_sum(sums[name])
    distributed.all_reduce_sum(count)
    images = int(count.item())
    if images == 0:
        raise ValueError(f"{run.function}: the run in {str(run.folder)!r} holds no decomposed image")
    return run.decomposition({name: (value / images)[None] for name, value in sums.items()}, torch.float64)


def ablate_run(
    run_folder: str | os.PathLike[str],
    *,
    labels: str | os.PathLike[str] | None = None,
    templates: str | os.PathLike[str] | None = None,
    heads: str | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str = "cpu",
) -> dict[str, Path]:
    """Zero-shot accuracy of the full model and after mean-ablating MLPs, attention layers or heads.

    Pass 1 sums every term over the images (each rank its shards, ``all_reduce``); pass 2 applies
    :func:`~vision_kernels.clip.mean_ablate` with those means to each shard and counts correct
    top-1 predictions against the zero-shot classifier of the class names (``labels``: a file of
    one name per class in class order; default the run's class folder names). Writes
    ``ablation.json`` and ``ablation.md`` into ``out`` (default the run folder).
    """
    from .ablation import mean_ablate, zero_shot_accuracy
    from .texts import DEFAULT_TEMPLATES, load_text_bank, zero_shot_classifier

    function = "vision_kernels.clip.ablate_run"
    run = DecomposeRun(run_folder, function)
    classes = list(run.options.get("source", {}).get("classes", []))
    if labels is not None:
        names = load_text_bank(Path(labels))
        if classes and len(names) != len(classes):
            raise ValueError(
                f"{function}: argument 'labels': {str(labels)!r} names {len(names)} classes, the run's images "
                f"have {len(classes)} class folders"
            )
        classes = names
    if len(classes) < 2:
        raise ValueError(
            f"{function}: zero-shot accuracy needs labeled images of at least 2 classes; the run in "
            f"{str(run.folder)!r} has {len(classes)} (decompose a folder of class sub-folders)"
        )
    prompts = list(DEFAULT_TEMPLATES) if templates is None else load_text_bank(Path(templates))
    chosen = parse_heads(heads, run, function) if heads else []
    out_folder = Path(out) if out is not None else run.folder
    if not out_folder.is_dir():
        raise FileNotFoundError(f"{function}: argument 'out': no such folder {str(out_folder)!r}")
    distributed.init_from_env(device)
    loaded = run.load_model(device)
    classifier = zero_shot_classifier(loaded.model, classes, prompts, tokenizer=loaded.tokenizer).cpu()  # [E, C]
    reference = ablation_reference(run)
    rows = _ablations(run, chosen)
    correct = torch.zeros(len(rows), dtype=torch.float64)
    labeled = torch.zeros(1, dtype=torch.float64)
    for index in _progress.progress(run.mine(), desc="ablation accuracy"):
        tensors = run.shard(index)
        keep = tensors["label"] >= 0
        if int(keep.sum()) == 0:
            continue
        if int(tensors["label"].max()) >= len(classes):
            raise ValueError(f"{function}: shard {index} has class labels beyond the {len(classes)} class names")
        part = run.decomposition({n: t[keep] for n, t in tensors.items() if n in TERMS}, torch.float64)
        truth = tensors["label"][keep]
        for row, (_, ablation) in enumerate(rows):
            embeddings = mean_ablate(part, reference, **ablation)
            correct[row] += round(zero_shot_accuracy(embeddings, classifier, truth) * truth.shape[0])
        labeled += truth.shape[0]
    distributed.all_reduce_sum(correct)
    distributed.all_reduce_sum(labeled)
    total = int(labeled.item())
    if total == 0:
        raise ValueError(f"{function}: no image of the run in {str(run.folder)!r} has a class label")
    table: list[dict[str, Any]] = [
        {"ablation": name, "accuracy": float(correct[r]) / total} for r, (name, _) in enumerate(rows)
    ]
    report = {"run": str(run.folder.resolve()), "images": total, "classes": classes, "rows": table}
    paths = {"json": out_folder / "ablation.json", "md": out_folder / "ablation.md"}
    if distributed.current().main:
        with atomic_open(paths["json"], "w", encoding="utf-8", function=function) as handle:
            json.dump(report, handle, indent=1)
        lines = [f"# Mean-ablation, zero-shot top-1 accuracy over {total} images, {len(classes)} classes", ""]
        lines += ["| mean-ablated | accuracy |", "|---|---|"]
        lines += [f"| {row['ablation']} | {100 * row['accuracy']:.2f}% |" for row in table]
        with atomic_open(paths["md"], "w", encoding="utf-8", function=function) as handle:
            handle.write("\n".join(lines) + "\n")
    distributed.barrier()
    return paths


def _term_shapes(run: DecomposeRun) -> dict[str, list[int]]:
    """Shape of one image's terms."""
    e = run.embed_dim
    return {
        "heads": [len(run.layers), run.heads] + ([run.tokens] if run.per_token else []) + [e],
        "other_heads": [e],
        "mlps": [run.num_layers, e],
        "embedding": [e],
        "bias": [e],
        "output": [e],
    }
