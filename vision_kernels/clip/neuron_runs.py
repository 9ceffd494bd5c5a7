"""Neuron statistics over a dataset as a resumable, distributed run folder (issue 13 item 5).

:func:`run_neuron_statistics` computes :class:`~vision_kernels.clip.NeuronStatistics` of one MLP layer's
neurons over an ordered list of images, in two sharded passes (:mod:`vision_kernels.runs`)::

    RUN/sums/     pass 1, per shard: sum_I phi_n(I) [Nn, E] (float64) and the image count
    RUN/top/      pass 2, per shard: the top_k centred effects |phi_n(I) - mean_n| of each neuron in the shard
                  (norms, image positions, raw effects [k, Nn, E] float32); mean = all shards' sums / count
    RUN/statistics.safetensors   the merged statistics (written atomically, last)

Each pass resumes after its complete shards; a damaged shard is recomputed. Under torchrun every rank
computes its own shards (``shard % world == rank``); the sums are all_reduced and the top candidates merged
across ranks by exchanging only ``top_k`` candidates per neuron (:mod:`vision_kernels.clip.neuron_candidates`).
Shards are computed from their own images alone, so the files do not depend on the number of ranks, and the
statistics equal those of one process (to float64 rounding of the sums). Image positions in ``top_images`` are
positions in the input list (unreadable images are skipped and listed in the shards' records).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from .. import _progress
from .._files import atomic_path
from ..runs import RunSpec, ShardedRun, ShardInfo, distributed
from .index import model_identity
from .neuron_candidates import Candidates, centred_norms, exchange_across_ranks, merge
from .neurons import (
    NeuronDirections,
    NeuronStatistics,
    _check_top_k,
    _effects_of,
    neuron_directions,
    statistics_from_candidates,
)
from .towers import as_vision_tower

__all__ = ["ImageLoader", "load_neuron_statistics", "run_neuron_statistics", "save_neuron_statistics"]

FUNCTION = "vision_kernels.clip.run_neuron_statistics"
STATISTICS = "statistics.safetensors"
_FORMAT = "vision_kernels.NeuronStatistics/1"

# An image loader maps input positions (one shard's) to batches of (images [B, C, H, W], positions [B]) of the
# readable images among them, in order; unreadable images are left out (they are reported as skipped).
ImageLoader = Callable[[Sequence[int]], Iterable[tuple[Tensor, Tensor]]]
T = TypeVar("T")


def _prepare_folder(folder: Path, function: str) -> None:
    """RUN/ must be new, empty or a neuron run (it holds sums/); rank 0 creates it.

    Every rank checks (the verdict is the same on all: creating the folder does not change it), then all
    meet at one barrier, so that no rank runs ahead into the next collective call.
    """
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{function}: argument 'out' {str(folder)!r} exists and is not a folder")
    if folder.is_dir():
        names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
        if names and "sums" not in names:
            raise FileExistsError(f"{function}: argument 'out' {str(folder)!r} is not empty and holds no neuron run "
                                  "(no sums/); choose a new or empty folder")  # fmt: skip
    elif not folder.parent.is_dir():
        raise FileNotFoundError(f"{function}: argument 'out' {str(folder)!r}: its folder {str(folder.parent)!r} "
                                "does not exist")  # fmt: skip
    if distributed.current().main:
        folder.mkdir(exist_ok=True)
    distributed.barrier()


def together(work: Callable[[], T], function: str) -> T:
    """``work()`` on every rank, then a check that it succeeded on all of them: a rank whose work failed
    re-raises its error, the others raise RuntimeError, instead of waiting forever in the next collective."""
    error: BaseException | None = None
    result = None
    try:
        result = work()
    except Exception as caught:  # noqa: BLE001 - re-raised below, after telling the other ranks
        error = caught
    if not distributed.all_ranks_ok(error is None):
        if error is not None:
            raise error
        raise RuntimeError(f"{function}: another rank failed (see its message); stopping this rank too")
    return result  # type: ignore[return-value]


def _shard_batches(load: ImageLoader, shard: ShardInfo) -> Iterable[tuple[Tensor, Tensor]]:
    return load(list(range(shard.start, shard.stop)))


def _skipped(shard: ShardInfo, seen: list[int]) -> list[int]:
    return sorted(set(range(shard.start, shard.stop)) - set(seen))


def _sums_pass(run: ShardedRun, tower: Any, load: ImageLoader, directions: NeuronDirections, normalize: bool,
               progress: bool | None) -> None:  # fmt: skip
    neurons, embed = directions.neurons.numel(), directions.directions.shape[-1]
    for shard in _progress.progress(run.pending(), desc="neurons: sums", enabled=progress):
        total = torch.zeros((neurons, embed), dtype=torch.float64)
        seen: list[int] = []
        for images, positions in _shard_batches(load, shard):
            effects = _effects_of(tower, images, directions, normalize, FUNCTION)  # [B, Nn, E]
            total += effects.double().sum(0).cpu()
            seen += [int(p) for p in positions]
        run.write(shard, {"sum": total, "count": torch.tensor([len(seen)], dtype=torch.int64)},
                  record={"skipped": _skipped(shard, seen)})  # fmt: skip


def _top_pass(run: ShardedRun, tower: Any, load: ImageLoader, directions: NeuronDirections, mean: Tensor,
              top_k: int, normalize: bool, progress: bool | None) -> None:  # fmt: skip
    neurons, embed = directions.neurons.numel(), directions.directions.shape[-1]
    for shard in _progress.progress(run.pending(), desc="neurons: top effects", enabled=progress):
        best: Candidates | None = None
        for images, positions in _shard_batches(load, shard):
            effects = _effects_of(tower, images, directions, normalize, FUNCTION).cpu()  # [B, Nn, E]
            norms = centred_norms(effects, mean)  # [B, Nn]
            where = torch.as_tensor(positions, dtype=torch.int64)[:, None].expand_as(norms)
            best = merge(best, norms, where, effects, top_k)
        if best is None:  # every image of the shard was unreadable
            best = Candidates(torch.zeros(0, neurons, dtype=torch.float64), torch.zeros(0, neurons, dtype=torch.int64),
                              torch.zeros(0, neurons, embed))  # fmt: skip
        run.write(shard, {"norms": best.norms, "positions": best.positions, "effects": best.effects.float()})


def _digest(tensor: Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


@torch.no_grad()
def run_neuron_statistics(
    model: object,
    inputs: Sequence[str],
    load: ImageLoader,
    out: str | os.PathLike[str],
    layer: int,
    neurons: Sequence[int] | Tensor | None = None,
    *,
    top_k: int = 100,
    shard_size: int = 1000,
    later_layers: Sequence[int] | None = None,
    convention: str = "per_term",
    normalize: bool = True,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> NeuronStatistics:
    """Neuron statistics of MLP ``layer`` over the images ``inputs`` as a resumable run folder ``out``.

    Args:
        model: open_clip CLIP / ViT or transformers CLIP vision model (on the device the loader's images use).
        inputs: the images' identifiers in order (paths, URLs); their positions are passed to ``load``.
        load: ``load(positions)`` -> batches ``(images [B, C, H, W], positions [B])`` of the readable images.
        out: the run folder (new, empty, or a run of the same settings to resume).
        layer, neurons, later_layers, convention, normalize: as :func:`vision_kernels.clip.neuron_effects`.
        top_k: the top effects kept per neuron (at most the number of readable images).
        shard_size: images per shard.
        options: more JSON settings that identify the run (e.g. model name, preprocessing).
        overwrite: replace a run of other settings in ``out`` instead of refusing it.

    Returns the statistics (on every rank) and writes them to ``out/statistics.safetensors``.
    """
    tower = as_vision_tower(model)
    directions = neuron_directions(tower, layer, neurons, later_layers=later_layers, convention=convention)
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"{FUNCTION}: argument 'top_k' must be an integer >= 1, got {top_k!r}")
    _check_top_k(top_k, len(inputs), FUNCTION)  # before any work; checked again against the readable images
    folder = Path(out)
    _prepare_folder(folder, FUNCTION)
    settings = {
        **(options or {}),
        "fingerprint": model_identity(tower).fingerprint,
        "layer": directions.layer,
        "neurons": directions.neurons.tolist(),
        "later_layers": list(directions.later_layers),
        "convention": convention,
        "normalize": normalize,
        "top_k": top_k,
    }
    sums = ShardedRun(folder / "sums", RunSpec("clip.neurons.sums", settings, list(inputs), shard_size),
                      overwrite=overwrite, function=FUNCTION)  # fmt: skip
    together(lambda: _sums_pass(sums, tower, load, directions, normalize, progress), FUNCTION)
    sums.finalize()
    neurons_count, embed = directions.neurons.numel(), directions.directions.shape[-1]
    total = torch.zeros((neurons_count, embed), dtype=torch.float64)
    count = torch.zeros(1, dtype=torch.int64)
    for shard in sums.mine():
        tensors = sums.read(shard.index)
        total += tensors["sum"]
        count += tensors["count"]
    distributed.all_reduce_sum(total)
    distributed.all_reduce_sum(count)
    images = int(count)
    if images == 0:
        raise ValueError(f"{FUNCTION}: argument 'inputs' holds no readable image ({len(inputs)} inputs)")
    _check_top_k(top_k, images, FUNCTION)
    mean = total / images  # [Nn, E]
    # The mean may differ in its last bits with the number of ranks (summation order): the top pass is tied to
    # the exact mean it used, and recomputed when the mean changes.
    top = ShardedRun(folder / "top", RunSpec("clip.neurons.top", {**settings, "mean_sha256": _digest(mean)},
                                             list(inputs), shard_size), overwrite=True, function=FUNCTION)  # fmt: skip
    together(lambda: _top_pass(top, tower, load, directions, mean, top_k, normalize, progress), FUNCTION)
    top.finalize()
    local: Candidates | None = None
    for shard in top.mine():
        tensors = top.read(shard.index)
        norms = centred_norms(tensors["effects"], mean)  # recomputed: the stored norms are not trusted
        local = merge(local, norms, tensors["positions"], tensors["effects"], top_k)
    best = exchange_across_ranks(local, top_k, neurons_count, embed)
    statistics = statistics_from_candidates(mean, best, images, directions)

    def save() -> None:
        if distributed.current().main:
            skipped = [p for record in sums_records(folder) for p in record.get("skipped", [])]
            save_neuron_statistics(statistics, folder / STATISTICS, {**settings, "skipped": skipped})

    together(save, FUNCTION)
    return statistics


def sums_records(folder: Path) -> list[dict[str, Any]]:
    """The per-shard records of the sums pass of a run folder (``skipped``: unreadable image positions)."""
    from ..runs import RunReader

    return RunReader.open(folder / "sums", kind="clip.neurons.sums", function=FUNCTION).records()


_FIELDS = ("mean", "top_norms", "top_images", "principal", "explained", "neurons")


def save_neuron_statistics(statistics: NeuronStatistics, path: str | os.PathLike[str],
                           settings: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write ``statistics`` (and the JSON ``settings`` that produced them) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    neurons = statistics.neurons if statistics.neurons is not None else torch.arange(statistics.mean.shape[0])
    tensors = {
        "mean": statistics.mean.double(),
        "top_norms": statistics.top_norms.double(),
        "top_images": statistics.top_images.long(),
        "principal": statistics.principal.float(),
        "explained": statistics.explained.float(),
        "neurons": neurons.long(),
    }
    header = {"format": _FORMAT, "count": statistics.count, "layer": statistics.layer, "settings": settings or {}}
    target = Path(path)
    with atomic_path(target, function="vision_kernels.clip.save_neuron_statistics") as temporary:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temporary),
                  metadata={"vision_kernels": json.dumps(header, sort_keys=True)})  # fmt: skip
    return target


def load_neuron_statistics(path: str | os.PathLike[str]) -> tuple[NeuronStatistics, dict[str, Any]]:
    """Read statistics written by :func:`save_neuron_statistics`: ``(statistics, settings)``.

    Every tensor's dtype and shape is checked against the others and the header (ValueError naming the file).
    """
    function = "vision_kernels.clip.load_neuron_statistics"
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{function}: argument 'path' must be a statistics file, got {str(path)!r} "
                                "(no such file)")  # fmt: skip

    def bad(what: str) -> ValueError:
        return ValueError(f"{function}: {str(path)!r} is not valid neuron statistics: {what}")

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = json.loads((handle.metadata() or {}).get("vision_kernels", "null"))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise bad(f"cannot be read ({error})") from None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise bad(f"header format must be {_FORMAT!r}")
    if set(tensors) != set(_FIELDS):
        raise bad(f"tensors must be {sorted(_FIELDS)}, got {sorted(tensors)}")
    count, layer = header.get("count"), header.get("layer")
    if not isinstance(count, int) or count < 1 or not (layer is None or isinstance(layer, int)):
        raise bad(f"header count/layer must be integers, got {count!r}/{layer!r}")
    mean, norms = tensors["mean"], tensors["top_norms"]
    if mean.dim() != 2 or norms.dim() != 2:
        raise bad(f"'mean' must be [Nn, E] and 'top_norms' [Nn, k], got {list(mean.shape)} and {list(norms.shape)}")
    (neurons, embed), k = mean.shape, norms.shape[1]
    expected = {"mean": ([neurons, embed], torch.float64), "top_norms": ([neurons, k], torch.float64),
                "top_images": ([neurons, k], torch.int64), "principal": ([neurons, embed], torch.float32),
                "explained": ([neurons], torch.float32), "neurons": ([neurons], torch.int64)}  # fmt: skip
    for name, (shape, dtype) in expected.items():
        if list(tensors[name].shape) != shape or tensors[name].dtype != dtype:
            raise bad(f"tensor {name!r} must be {dtype} {shape}, got {tensors[name].dtype} {list(tensors[name].shape)}")
    if not 1 <= k <= count or bool((tensors["top_images"] < 0).any()) or not bool(torch.isfinite(mean).all()):
        raise bad("top images out of range or non-finite mean")
    statistics = NeuronStatistics(
        mean=mean,
        top_norms=norms,
        top_images=tensors["top_images"],
        principal=tensors["principal"],
        explained=tensors["explained"],
        count=count,
        layer=layer,
        neurons=tensors["neurons"],
    )
    settings = header.get("settings")
    return statistics, settings if isinstance(settings, dict) else {}
