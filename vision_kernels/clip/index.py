"""FAISS databases of per-head direct contributions: the image databases of CLIP-InterpreT's searches.

A :class:`HeadIndex` holds, for an image collection, one FAISS index per *key*: a single attention head
``(layer, head)`` (key ``"L{layer}H{head}"``) or a named group of heads whose contributions are summed (a
"property", e.g. the heads that encode colors). The vector of image ``I`` under a key is its direct
contribution through those heads (:func:`vision_kernels.clip.decompose`, per head, summed over tokens,
normalized by ``|z|``), centred by the database mean (``center=True``) and L2-normalized for the
``"cosine"`` metric, so an inner-product search ranks by cosine similarity of the centred contributions.

Index kinds: ``"flat"`` (exact inner product, ``faiss.IndexFlatIP``), ``"ivf"`` (inverted lists over
``nlist`` k-means cells, ``faiss.IndexIVFFlat``, searching ``nprobe`` cells: approximate, for large
collections), ``"auto"`` (IVF from 100,000 images on). With faiss-gpu installed and ``device="cuda"`` the
indexes live on the GPU. A flat index on the CPU is searched with torch's matrix product over the index's
own storage (no copy), in blocks of the database with a running top-k: the exhaustive search is one
matrix product, which torch's BLAS does faster than the BLAS bundled with faiss-cpu wheels. The mean (and
the IVF training set) come from the first ``sample_size`` images (all of them when the collection is
smaller); building shows a progress bar over image batches.

Indexes are saved to a directory (``meta.json``, ``means.npz``, one ``.faiss`` file per key) together with
the identity of the model that produced the contributions: a fingerprint of the vision tower's weights.
:meth:`HeadIndex.load` and every query that runs the model refuse a model with another fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _progress
from . import _index_build as build
from ._index_files import FORMAT, VERSION, read_index_folder, write_index_folder
from ._index_keys import (
    IVF_FROM,
    check_finite,
    check_options,
    chosen_kind,
    finite_images,
    head_key,
    image_batches,
    parse_key,
    resolve_keys,
)
from ._index_keys import (
    contributions as key_contributions,
)
from .towers import VisionTower, as_vision_tower

__all__ = ["IVF_FROM", "HeadIndex", "ModelIdentity", "SearchResult", "head_key", "model_identity"]

FUNCTION = "vision_kernels.clip.HeadIndex"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced an index's contributions.

    Attributes:
        name: a label for people (a model name and weights tag, or the module's class name).
        fingerprint: SHA-256 of the vision tower's parameter names, shapes and a fixed sample of their values
            (converting the model to another dtype changes it).
    """

    name: str
    fingerprint: str


def model_identity(model: object, name: str | None = None) -> ModelIdentity:
    """The :class:`ModelIdentity` of ``model`` (open_clip or transformers CLIP), labelled ``name``."""
    tower = as_vision_tower(model)
    digest = hashlib.sha256()
    with torch.no_grad():
        for parameter_name, parameter in tower.module.named_parameters():
            flat = parameter.detach().reshape(-1)
            step = max(1, flat.numel() // 1024)
            sample = flat[::step][:1024].float().cpu().contiguous()
            digest.update(parameter_name.encode())
            digest.update(str(tuple(parameter.shape)).encode())
            digest.update(sample.numpy().tobytes())
    return ModelIdentity(name or type(tower.module).__name__, digest.hexdigest())


@dataclass
class SearchResult:
    """Nearest neighbours of ``Q`` queries.

    Attributes:
        scores: ``[Q, k]`` similarities (cosine or inner product), descending.
        indices: ``[Q, k]`` positions in the database (-1 where fewer than k were found).
        ids: the database ids of those positions (None when the index has no ids).
    """

    scores: Tensor
    indices: Tensor
    ids: list[list[Any]] | None = None


class HeadIndex:
    """Per-head (and per-head-group) FAISS databases of an image collection's direct contributions.

    Build with :meth:`build` (from a model and images) or :meth:`from_contributions` (from precomputed
    contributions); query with :meth:`search_images`, :meth:`search_contributions` or
    :meth:`search_directions` (text embeddings); persist with :meth:`save` / :meth:`load`.

    Attributes:
        identity: the :class:`ModelIdentity` of the model that produced the contributions.
        keys: ``{key: ((layer, head), ...)}`` the heads summed under each key.
        metric: ``"cosine"`` or ``"ip"``; center: whether vectors are centred by the database mean.
        kind: ``"flat"`` or ``"ivf"``; dim: the embedding size; count: images in the database.
        ids: optional per-image ids (paths, dataset indices, ...), ``len == count``.
    """

    def __init__(
        self,
        *,
        identity: ModelIdentity,
        keys: Mapping[str, tuple[tuple[int, int], ...]],
        indexes: Mapping[str, Any],
        means: Mapping[str, np.ndarray | None],
        metric: str,
        center: bool,
        kind: str,
        dim: int,
        count: int,
        ids: Sequence[Any] | None = None,
        nprobe: int = 16,
    ) -> None:
        self.identity = identity
        self.keys = dict(keys)
        self.indexes = dict(indexes)
        self.means = dict(means)
        self.metric, self.center, self.kind = metric, center, kind
        self.dim, self.count = dim, count
        self.ids = list(ids) if ids is not None else None
        self.nprobe = nprobe
        self._apply_nprobe()

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return (
            f"HeadIndex({self.count} images, {len(self.keys)} keys, {self.kind}, {self.metric}, "
            f"model {self.identity.name!r})"
        )

    def _apply_nprobe(self) -> None:
        for index in self.indexes.values():
            if hasattr(index, "nprobe"):
                index.nprobe = self.nprobe

    # ------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        model: object,
        images: Tensor | Iterable,
        *,
        heads: Iterable[Sequence[int]] | None = None,
        layers: Iterable[int] | None = None,
        groups: Mapping[str, Iterable[Sequence[int]]] | None = None,
        metric: str = "cosine",
        center: bool = True,
        kind: str = "auto",
        nlist: int | None = None,
        nprobe: int = 16,
        batch_size: int = 32,
        sample_size: int = 10_000,
        ids: Sequence[Any] | None = None,
        name: str | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
    ) -> HeadIndex:
        """Decompose ``images`` with ``model`` and index the contributions of the chosen heads.

        Args:
            model: open_clip CLIP / ViT tower or transformers CLIP vision model.
            images: ``[K, C, H, W]`` preprocessed images, or an iterable of batches (a DataLoader yielding
                images or ``(images, labels)``) on the model's device.
            heads: ``(layer, head)`` pairs to index one by one (model layer indices).
            layers: index every head of these layers one by one.
            groups: ``{name: [(layer, head), ...]}`` head groups indexed by their summed contributions.
            metric: ``"cosine"`` (default) or ``"ip"`` (raw inner product).
            center: subtract the database mean (estimated on the first ``sample_size`` images).
            kind: ``"auto"``, ``"flat"`` or ``"ivf"``.
            nlist: IVF cells (default ``4 sqrt(sample)``, at most ``sample / 39``); nprobe: cells searched.
            batch_size: images per decomposition (a tensor input is split into such batches).
            sample_size: images buffered to fix the mean and train IVF before the rest is added.
            ids: optional id per image, returned with search results.
            name: label of the model recorded with the index (the fingerprint is what is checked).
            device: ``"cuda"`` puts the indexes on the GPU when faiss-gpu is installed.
            progress: progress bar over batches (default: the global setting).

        Raises:
            ValueError / IndexError naming the argument: unknown metric or kind, no heads, a head out of
            range, ids of the wrong length, an empty collection.
        """
        function = f"{FUNCTION}.build"
        tower = as_vision_tower(model)
        check_options(metric, kind, batch_size, sample_size, function)
        keys = resolve_keys(tower, heads, layers, groups, function)
        batches, total = image_batches(images, batch_size)
        chosen = chosen_kind(kind, total)
        dim = tower.embed_dim()
        gpu = build.gpu_device(device)
        builders = {key: build.KeyBuilder(dim, metric, center, chosen, nlist, sample_size, gpu) for key in keys}
        count = 0
        with torch.no_grad():
            for batch in _progress.progress(batches, desc="index images", enabled=progress):
                batch = batch[0] if isinstance(batch, (tuple, list)) else batch
                vectors = key_contributions(tower, finite_images(tower, batch, function), keys)
                for key, builder in builders.items():
                    builder.add(vectors[key].cpu().numpy())
                count += batch.shape[0]
        if count == 0:
            raise ValueError(f"{function}: argument 'images' holds no image")
        finished = {key: builder.finish() for key, builder in builders.items()}
        return cls._finished(finished, model_identity(tower, name), keys, metric, center, chosen, dim, count, ids,
                             nprobe, function)  # fmt: skip

    @classmethod
    def from_contributions(
        cls,
        contributions: Mapping[str, Tensor],
        identity: ModelIdentity,
        *,
        keys: Mapping[str, Iterable[Sequence[int]]] | None = None,
        metric: str = "cosine",
        center: bool = True,
        kind: str = "auto",
        nlist: int | None = None,
        nprobe: int = 16,
        sample_size: int = 100_000,
        chunk: int = 65_536,
        ids: Sequence[Any] | None = None,
        device: str | torch.device | None = None,
        progress: bool | None = None,
    ) -> HeadIndex:
        """Index precomputed contributions ``{key: [K, E]}`` (e.g. ``decompose(...).heads[:, s, h]``).

        ``keys`` names the heads behind each key (default: parsed from ``"L{layer}H{head}"`` keys, else
        empty). ``identity`` is the :func:`model_identity` of the model that produced them. Vectors are added
        in chunks of ``chunk`` (progress bar).
        """
        function = f"{FUNCTION}.from_contributions"
        check_options(metric, kind, chunk, sample_size, function)
        if not contributions:
            raise ValueError(f"{function}: argument 'contributions' must hold at least one key")
        shapes = {key: tuple(value.shape) for key, value in contributions.items()}
        first = next(iter(shapes.values()))
        if any(len(s) != 2 or s != first for s in shapes.values()) or first[0] == 0:
            raise ValueError(f"{function}: argument 'contributions' must map keys to non-empty [K, E] tensors of one "
                             f"shape, got {shapes}")  # fmt: skip
        count, dim = first
        chosen = chosen_kind(kind, count)
        gpu = build.gpu_device(device)
        names = {key: tuple(keys[key]) if keys and key in keys else parse_key(key) for key in contributions}
        finished = {
            key: build.index_tensor(
                value,
                metric=metric,
                center=center,
                kind=chosen,
                nlist=nlist,
                sample=min(sample_size, count),
                gpu=gpu,
                chunk=chunk,
                progress=progress,
                function=function,
                name=f"contributions[{key!r}]",
            )  # fmt: skip
            for key, value in contributions.items()
        }
        return cls._finished(finished, identity, names, metric, center, chosen, dim, count, ids, nprobe, function)

    @classmethod
    def _finished(
        cls,
        finished: Mapping[str, tuple[Any, np.ndarray | None]],
        identity: ModelIdentity,
        keys: Mapping[str, Any],
        metric: str,
        center: bool,
        kind: str,
        dim: int,
        count: int,
        ids: Sequence[Any] | None,
        nprobe: int,
        function: str,
    ) -> HeadIndex:
        if ids is not None and len(ids) != count:
            raise ValueError(f"{function}: argument 'ids' must hold one id per image ({count}), got {len(ids)}")
        return cls(
            identity=identity,
            keys={key: tuple(tuple(p) for p in keys[key]) for key in finished},
            indexes={key: index for key, (index, _) in finished.items()},
            means={key: mean for key, (_, mean) in finished.items()},
            metric=metric,
            center=center,
            kind=kind,
            dim=dim,
            count=count,
            ids=ids,
            nprobe=nprobe,
        )

    # ------------------------------------------------------------ queries

    def check_model(self, model: object, function: str = FUNCTION) -> VisionTower:
        """The model's tower, after checking that it is the model the index was built for (else ValueError)."""
        return _check_identity(self.identity, model, function)

    def _key(self, key: str, function: str) -> str:
        if key not in self.indexes:
            raise KeyError(
                f"{function}: argument 'key' must be one of the index's keys {sorted(self.indexes)}, got {key!r}"
            )
        return key

    def contributions(self, model: object, images: Tensor, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """``{key: [B, E]}`` the raw contributions of ``images`` under ``keys`` (default all), as indexed."""
        function = f"{FUNCTION}.contributions"
        tower = self.check_model(model, function)
        chosen = {self._key(k, function): self.keys[k] for k in (keys or list(self.keys))}
        with torch.no_grad():
            return key_contributions(tower, finite_images(tower, images, function), chosen)

    def _search(self, key: str, prepared: np.ndarray, k: int, function: str) -> SearchResult:
        if not 1 <= k:
            raise ValueError(f"{function}: argument 'k' must be >= 1, got {k}")
        index = self.indexes[key]
        if type(index).__name__ == "IndexFlatIP" and index.ntotal > 0:
            scores, indices = build.flat_search(index, prepared, min(k, self.count))
        else:
            scores, indices = index.search(prepared, min(k, self.count))
        ids = None
        if self.ids is not None:
            ids = [[self.ids[i] if i >= 0 else None for i in row] for row in indices.tolist()]
        return SearchResult(torch.from_numpy(scores), torch.from_numpy(indices), ids)

    def _queries(self, queries: Tensor, function: str, name: str) -> np.ndarray:
        if not isinstance(queries, Tensor):
            raise TypeError(f"{function}: argument '{name}' must be a torch.Tensor, got {type(queries).__name__}")
        queries = queries[None] if queries.dim() == 1 else queries
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"{function}: argument '{name}' must be [E] or [Q, E] with E = {self.dim} (the index's embedding "
                f"size), got {list(queries.shape)}"
            )
        check_finite(queries, function, name)
        return queries.detach().float().cpu().numpy()

    def search_contributions(self, key: str, contributions: Tensor, k: int = 4) -> SearchResult:
        """Nearest database images of contributions ``[Q, E]`` under ``key`` (centred, normalized as the database)."""
        function = f"{FUNCTION}.search_contributions"
        key = self._key(key, function)
        prepared = build.prepare(self._queries(contributions, function, "contributions"), self.means[key], self.metric)
        return self._search(key, prepared, k, function)

    def search_images(self, model: object, images: Tensor, key: str, k: int = 4) -> SearchResult:
        """Nearest database images of ``images [B, C, H, W]`` under ``key`` (the model must be the index's)."""
        vectors = self.contributions(model, images, [key])[key]
        return self.search_contributions(key, vectors, k)

    def search_directions(self, key: str, directions: Tensor, k: int = 4) -> SearchResult:
        """Database images whose (centred, normalized) contributions under ``key`` best match directions ``[Q, E]``
        such as text embeddings (the directions are normalized for the cosine metric, not centred)."""
        function = f"{FUNCTION}.search_directions"
        key = self._key(key, function)
        prepared = build.prepare(self._queries(directions, function, "directions"), None, self.metric)
        return self._search(key, prepared, k, function)

    # ------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the index into the folder ``path``: metadata, means and one FAISS file per key.

        The folder is written under a temporary name and swapped in whole, so a save over an existing index
        that is interrupted (even by SIGKILL) leaves the previous index loadable. A non-empty folder that
        holds no index is refused (FileExistsError) rather than replaced.
        """
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "identity": {"name": self.identity.name, "fingerprint": self.identity.fingerprint},
            "keys": {key: [list(pair) for pair in pairs] for key, pairs in self.keys.items()},
            "metric": self.metric,
            "center": self.center,
            "kind": self.kind,
            "dim": self.dim,
            "count": self.count,
            "nprobe": self.nprobe,
            "ids": self.ids,
        }
        indexes = {key: build.on_cpu(index) for key, index in self.indexes.items()}
        return write_index_folder(path, meta, indexes, self.means, f"{FUNCTION}.save")

    @classmethod
    def load(cls, path: str | Path, model: object, *, device: str | torch.device | None = None) -> HeadIndex:
        """Read an index saved by :meth:`save`, refusing it when ``model`` is not the model it was built for.

        Nothing in the folder is trusted: see :mod:`vision_kernels.clip._index_files` for the checks. A damaged
        folder raises one ValueError (FileNotFoundError for a missing file) naming the folder and the field.
        """
        function = f"{FUNCTION}.load"
        fields = read_index_folder(path, function)
        identity = ModelIdentity(**fields.pop("identity"))
        _check_identity(identity, model, function)
        gpu = build.gpu_device(device)
        if gpu is not None:
            fields["indexes"] = {k: build.to_gpu(v, gpu) for k, v in fields["indexes"].items()}
        return cls(identity=identity, **fields)


def _check_identity(identity: ModelIdentity, model: object, function: str) -> VisionTower:
    tower = as_vision_tower(model)
    actual = model_identity(tower)
    if actual.fingerprint != identity.fingerprint:
        raise ValueError(
            f"{function}: argument 'model' is not the model this index was built for: the index was built for "
            f"{identity.name!r} (weights fingerprint {identity.fingerprint[:12]}...), the model's fingerprint is "
            f"{actual.fingerprint[:12]}...; rebuild the index for this model"
        )
    return tower
