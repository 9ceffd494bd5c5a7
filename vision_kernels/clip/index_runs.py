"""Building a CLIP-InterpreT database (:class:`~vision_kernels.clip.HeadIndex`) over a dataset, across ranks.

:func:`build_index_run` indexes the per-head (and head-group) direct contributions of an ordered image list:

1. *Mean* (and IVF training set): the first ``sample_size`` images. Every rank decomposes its part of the
   sample; the per-key sums and counts are all_reduced, so every rank centres with the same mean. For IVF
   the sample's vectors are assembled (each rank fills its rows of one all_reduced table) and rank 0 trains
   the quantizer, which is broadcast to all ranks.
2. *Parts*: every rank adds its own shards' vectors to copies of the (trained) empty index, one FAISS part per
   shard and key, stored as a resumable run folder ``<DB>.parts/`` (a killed build resumes after the last
   complete shard).
3. *Merge*: rank 0 merges the parts in shard order with FAISS's own ``merge_from`` (inverted lists for IVF,
   codes for flat), so the database does not depend on the number of ranks, and saves it atomically
   (:meth:`HeadIndex.save`); the parts folder is then removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _progress
from ..runs import RunSpec, ShardedRun, distributed
from . import _index_build as build
from ._index_keys import check_options, chosen_kind, contributions, finite_images, resolve_keys
from .index import HeadIndex, model_identity
from .neuron_runs import ImageLoader, together
from .towers import as_vision_tower

__all__ = ["build_index_run"]

FUNCTION = "vision_kernels.clip.build_index_run"


def _vectors(tower: Any, images: Tensor, keys: Mapping[str, Any]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        vectors = contributions(tower, finite_images(tower, images, FUNCTION), keys)
    return {key: value.cpu().numpy() for key, value in vectors.items()}


Arrays = dict[str, np.ndarray]


def _sample(tower: Any, load: ImageLoader, sample: int, shard_size: int, keys: Mapping[str, Any], dim: int,
            keep_rows: bool, progress: bool | None) -> tuple[Arrays, Arrays, np.ndarray]:  # fmt: skip
    """Per key the all_reduced sum of the sample's vectors, the sample's rows (IVF only) and which rows exist."""
    sums = {key: torch.zeros(dim, dtype=torch.float64) for key in keys}
    rows = {key: torch.zeros((sample if keep_rows else 0, dim), dtype=torch.float32) for key in keys}
    present = torch.zeros(sample, dtype=torch.int64)
    chunks = distributed.owned([range(s, min(s + shard_size, sample)) for s in range(0, sample, shard_size)])

    def accumulate() -> None:
        for chunk in _progress.progress(chunks, desc="index: mean", enabled=progress):
            for images, positions in load(list(chunk)):
                vectors = _vectors(tower, images, keys)
                where = torch.as_tensor(positions, dtype=torch.int64)
                present[where] = 1
                for key, value in vectors.items():
                    sums[key] += torch.from_numpy(value).double().sum(0)
                    if keep_rows:
                        rows[key][where] = torch.from_numpy(value)

    together(accumulate, FUNCTION)
    for tensor in (*sums.values(), *rows.values(), present):
        distributed.all_reduce_sum(tensor)
    mask = present.numpy().astype(bool)
    kept = {k: v.numpy()[mask] if keep_rows else v.numpy() for k, v in rows.items()}
    return {k: v.numpy() for k, v in sums.items()}, kept, mask


def _empty_indexes(keys: Sequence[str], kind: str, nlist: int | None, dim: int, training: Mapping[str, np.ndarray],
                   means: Mapping[str, np.ndarray | None], metric: str) -> dict[str, Any]:  # fmt: skip
    """Per key the empty (trained, for IVF) index: built on rank 0, broadcast to every rank."""
    faiss = build.faiss()
    blobs = None
    if distributed.current().main:
        blobs = {}
        for key in keys:
            prepared = (
                build.prepare(training[key], means[key], metric) if kind == "ivf" else np.zeros((0, dim), np.float32)
            )
            blobs[key] = faiss.serialize_index(build.new_index(dim, kind, nlist, prepared, None)).tobytes()
    blobs = distributed.broadcast_object(blobs)
    assert blobs is not None
    return {key: faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8)) for key, blob in blobs.items()}


def _digest(arrays: Mapping[str, np.ndarray | None]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        value = arrays[key]
        digest.update(b"none" if value is None else np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


@torch.no_grad()
def build_index_run(
    model: object,
    inputs: Sequence[str],
    load: ImageLoader,
    out: str | os.PathLike[str],
    *,
    heads: Iterable[Sequence[int]] | None = None,
    layers: Iterable[int] | None = None,
    groups: Mapping[str, Iterable[Sequence[int]]] | None = None,
    metric: str = "cosine",
    center: bool = True,
    kind: str = "auto",
    nlist: int | None = None,
    nprobe: int = 16,
    sample_size: int = 10_000,
    shard_size: int = 1000,
    name: str | None = None,
    keep_parts: bool = False,
    progress: bool | None = None,
) -> HeadIndex | None:
    """Build the :class:`HeadIndex` of the images ``inputs`` (see the module docstring) and save it to ``out``.

    ``load(positions)`` yields batches ``(images [B, C, H, W], positions [B])`` of the readable images among the
    given input positions (unreadable ones are left out and not indexed). The ids of the database are the
    inputs. Returns the index on rank 0 (None on the other ranks).
    """
    tower = as_vision_tower(model)
    check_options(metric, kind, 1, sample_size, FUNCTION)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"{FUNCTION}: argument 'shard_size' must be an integer >= 1, got {shard_size!r}")
    if not inputs:
        raise ValueError(f"{FUNCTION}: argument 'inputs' must hold at least one image")
    keys = resolve_keys(tower, heads, layers, groups, FUNCTION)
    chosen = chosen_kind(kind, len(inputs))
    dim = tower.embed_dim()
    folder = Path(out)
    parts_folder = folder.with_name(folder.name + ".parts")
    sample = min(sample_size, len(inputs))
    sums, rows, present = _sample(tower, load, sample, shard_size, keys, dim, chosen == "ivf", progress)
    seen = int(present.sum())
    if seen == 0:
        raise ValueError(f"{FUNCTION}: none of the first {sample} images could be read")
    means = {key: (value / seen).astype(np.float32) if center else None for key, value in sums.items()}
    empty = _empty_indexes(list(keys), chosen, nlist, dim, rows, means, metric)
    faiss = build.faiss()
    identity = model_identity(tower, name)
    options = {
        "fingerprint": identity.fingerprint,
        "keys": {k: [list(p) for p in v] for k, v in keys.items()},
        "metric": metric,
        "kind": chosen,
        "means": _digest(means),
        "trained": hashlib.sha256(b"".join(faiss.serialize_index(empty[k]).tobytes() for k in keys)).hexdigest(),
    }
    if distributed.current().main:
        parts_folder.mkdir(exist_ok=True)
    distributed.barrier()
    run = ShardedRun(parts_folder, RunSpec("clip.index.parts", options, list(inputs), shard_size), overwrite=True,
                     function=FUNCTION)  # fmt: skip
    names = {key: f"part_{position:04d}" for position, key in enumerate(keys)}

    def add_parts() -> None:
        for shard in _progress.progress(run.pending(), desc="index: parts", enabled=progress):
            parts = {key: faiss.clone_index(empty[key]) for key in keys}
            positions: list[int] = []
            for images, where in load(list(range(shard.start, shard.stop))):
                for key, value in _vectors(tower, images, keys).items():
                    parts[key].add(build.prepare(value, means[key], metric))
                positions += [int(p) for p in where]
            tensors = {names[k]: torch.from_numpy(faiss.serialize_index(part).copy()) for k, part in parts.items()}
            tensors["positions"] = torch.tensor(positions, dtype=torch.int64)
            skipped = sorted(set(range(shard.start, shard.stop)) - set(positions))
            run.write(shard, tensors, record={"skipped": skipped})

    def merge_and_save() -> HeadIndex | None:
        if not distributed.current().main:
            return None
        result = _merge(run, keys, names, empty, means, identity, metric, center, chosen, dim, nprobe, inputs)
        result.save(folder)
        if not keep_parts:
            shutil.rmtree(parts_folder, ignore_errors=True)
        return result

    together(add_parts, FUNCTION)
    run.finalize()
    return together(merge_and_save, FUNCTION)


def _merge(run: ShardedRun, keys: Mapping[str, Any], names: Mapping[str, str], empty: Mapping[str, Any],
           means: Mapping[str, np.ndarray | None], identity: Any, metric: str, center: bool, kind: str, dim: int,
           nprobe: int, inputs: Sequence[str]) -> HeadIndex:  # fmt: skip
    """Merge every shard's parts in shard order (FAISS merge_from) into one index per key."""
    faiss = build.faiss()
    merged = {key: faiss.clone_index(empty[key]) for key in keys}
    ids: list[str] = []
    for shard in _progress.progress(run.shards, desc="index: merge"):
        tensors = run.read(shard.index)
        for key in keys:
            part = faiss.deserialize_index(tensors[names[key]].numpy())
            if kind == "ivf":
                merged[key].merge_from(part, merged[key].ntotal)  # shifts the part's ids after the merged ones
            else:
                merged[key].merge_from(part)  # flat codes: positions follow in order
        ids += [inputs[int(p)] for p in tensors["positions"]]
    count = len(ids)
    if count == 0:
        raise ValueError(f"{FUNCTION}: argument 'inputs' holds no readable image")
    return HeadIndex(identity=identity, keys=keys, indexes=merged, means=means, metric=metric, center=center,
                     kind=kind, dim=dim, count=count, ids=ids, nprobe=nprobe)  # fmt: skip
