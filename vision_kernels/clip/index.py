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

import functools
import hashlib
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _progress
from ..ops._checks import ArgCheck
from ._index_files import FORMAT, VERSION, faiss_module, read_index_folder, write_index_folder
from .decompose import decompose
from .towers import VisionTower, as_vision_tower, check_images

__all__ = ["HeadIndex", "ModelIdentity", "SearchResult", "head_key", "model_identity"]

FUNCTION = "vision_kernels.clip.HeadIndex"
METRICS = ("cosine", "ip")
KINDS = ("auto", "flat", "ivf")
IVF_FROM = 100_000  # "auto" switches to IVF from this many images


def _faiss() -> Any:
    return faiss_module(FUNCTION)


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


def head_key(layer: int, head: int) -> str:
    """The key of a single head's index: ``"L{layer}H{head}"``."""
    return f"L{int(layer)}H{int(head)}"


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


class _KeyBuilder:
    """Buffers the first ``sample_size`` vectors of one key, then fixes the mean, trains and adds."""

    def __init__(self, dim: int, metric: str, center: bool, kind: str, nlist: int | None, sample: int, gpu: int | None):
        self.dim, self.metric, self.center, self.kind = dim, metric, center, kind
        self.nlist, self.sample, self.gpu = nlist, sample, gpu
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.index: Any = None
        self.mean: np.ndarray | None = None

    def add(self, vectors: np.ndarray) -> None:
        if self.index is None:
            self.buffer.append(vectors)
            self.buffered += len(vectors)
            if self.buffered >= self.sample:
                self._start()
        else:
            self.index.add(_prepare(vectors, self.mean, self.metric))

    def _start(self) -> None:
        data = np.concatenate(self.buffer) if self.buffer else np.zeros((0, self.dim), np.float32)
        self.buffer = []
        self.mean = data.mean(0).astype(np.float32) if self.center and len(data) else None
        prepared = _prepare(data, self.mean, self.metric)
        self.index = _new_index(self.dim, self.kind, self.nlist, prepared, self.gpu)
        if len(prepared):
            self.index.add(prepared)

    def finish(self) -> tuple[Any, np.ndarray | None]:
        if self.index is None:
            self._start()
        return self.index, self.mean


def _prepare(vectors: np.ndarray, mean: np.ndarray | None, metric: str) -> np.ndarray:
    """Centre (when a mean is given) and, for cosine, L2-normalize rows; a new float32 C-contiguous array."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if mean is not None:
        out -= mean
    if metric == "cosine" and len(out):
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
        out /= np.maximum(norms, np.finfo(np.float32).tiny)
    return out


_gpu_resources: Any = None


def _gpu_device(device: str | torch.device | None) -> int | None:
    """The CUDA ordinal for faiss-gpu, or None to stay on the CPU (no GPU, or faiss without GPU support)."""
    faiss = _faiss()
    if device is None or torch.device(device).type != "cuda":
        return None
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    return torch.device(device).index or 0


def _new_index(dim: int, kind: str, nlist: int | None, training: np.ndarray, gpu: int | None) -> Any:
    global _gpu_resources
    faiss = _faiss()
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        count = len(training)
        cells = nlist or int(4 * math.sqrt(count))
        cells = max(1, min(cells, count // 39))  # FAISS wants >= 39 training points per cell
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True  # the index owns (and frees) its quantizer
        quantizer.this.disown()
        index.train(training)
    if gpu is not None:
        if _gpu_resources is None:
            _gpu_resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(_gpu_resources, gpu, index)
    return index


def _on_cpu(index: Any) -> Any:
    faiss = _faiss()
    if type(index).__name__.startswith("Gpu"):
        return faiss.index_gpu_to_cpu(index)
    return index


def _as_pairs(value: Iterable[Sequence[int]], function: str, name: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for item in value:
        if len(item) != 2:
            raise ValueError(f"{function}: argument '{name}' must hold (layer, head) pairs, got {item!r}")
        check = ArgCheck(function)
        pairs.append((check.integer(item[0], name), check.integer(item[1], name)))
    if not pairs:
        raise ValueError(f"{function}: argument '{name}' must hold at least one (layer, head) pair")
    return tuple(pairs)


def _resolve_keys(
    tower: VisionTower,
    heads: Iterable[Sequence[int]] | None,
    layers: Iterable[int] | None,
    groups: Mapping[str, Iterable[Sequence[int]]] | None,
    function: str,
) -> dict[str, tuple[tuple[int, int], ...]]:
    keys: dict[str, tuple[tuple[int, int], ...]] = {}
    num_layers, num_heads = tower.num_layers, tower.heads
    pairs = list(_as_pairs(heads, function, "heads")) if heads is not None else []
    for layer in ArgCheck(function).integers(layers or (), "layers"):
        pairs += [(layer % num_layers if -num_layers <= layer < num_layers else layer, h) for h in range(num_heads)]
    for layer, head in pairs:
        keys[head_key(layer, head)] = ((layer, head),)
    for name, members in (groups or {}).items():
        if name in keys:
            raise ValueError(f"{function}: argument 'groups' has name {name!r}, which is the key of a single head")
        keys[str(name)] = _as_pairs(members, function, f"groups[{name!r}]")
    if not keys:
        raise ValueError(f"{function}: give the heads to index: 'heads', 'layers' or 'groups'")
    for members in keys.values():
        for layer, head in members:
            if not 0 <= layer < num_layers or not 0 <= head < num_heads:
                raise IndexError(
                    f"{function}: head ({layer}, {head}) is out of range for a model with {num_layers} layers of "
                    f"{num_heads} heads"
                )
    return keys


def _image_batches(images: Tensor | Iterable, batch_size: int) -> tuple[Iterable, int | None]:
    """Batches of images and, when known, how many images there are."""
    if isinstance(images, Tensor):
        return images.split(batch_size), images.shape[0]
    dataset = getattr(images, "dataset", None)
    total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    return images, total


def _contributions(
    tower: VisionTower, images: Tensor, keys: Mapping[str, tuple[tuple[int, int], ...]]
) -> dict[str, Tensor]:
    """``{key: [B, E]}`` summed direct contributions (normalized by ``|z|``) of each key's heads."""
    layers = sorted({layer for members in keys.values() for layer, _ in members})
    heads = decompose(tower, images, layers=layers, per_head=True, normalize=True, keep_capture=False).heads
    position = {layer: i for i, layer in enumerate(layers)}  # heads: [B, S, H, E]
    out = {}
    for key, members in keys.items():
        terms = [heads[:, position[layer], head] for layer, head in members]  # each [B, E]
        out[key] = functools.reduce(operator.add, terms).float()
    return out


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
        _check_options(metric, kind, batch_size, sample_size, function)
        keys = _resolve_keys(tower, heads, layers, groups, function)
        batches, total = _image_batches(images, batch_size)
        chosen = "ivf" if kind == "ivf" or (kind == "auto" and (total or 0) >= IVF_FROM) else "flat"
        dim = tower.embed_dim()
        gpu = _gpu_device(device)
        builders = {key: _KeyBuilder(dim, metric, center, chosen, nlist, sample_size, gpu) for key in keys}
        count = 0
        with torch.no_grad():
            for batch in _progress.progress(batches, desc="index images", enabled=progress):
                batch = batch[0] if isinstance(batch, (tuple, list)) else batch
                vectors = _contributions(tower, _finite_images(tower, batch, function), keys)
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
        _check_options(metric, kind, chunk, sample_size, function)
        if not contributions:
            raise ValueError(f"{function}: argument 'contributions' must hold at least one key")
        shapes = {key: tuple(value.shape) for key, value in contributions.items()}
        first = next(iter(shapes.values()))
        if any(len(s) != 2 or s != first for s in shapes.values()) or first[0] == 0:
            raise ValueError(f"{function}: argument 'contributions' must map keys to non-empty [K, E] tensors of one "
                             f"shape, got {shapes}")  # fmt: skip
        count, dim = first
        for key, value in contributions.items():
            _check_finite(value, function, f"contributions[{key!r}]")
        chosen = "ivf" if kind == "ivf" or (kind == "auto" and count >= IVF_FROM) else "flat"
        gpu = _gpu_device(device)
        names = {key: tuple(keys[key]) if keys and key in keys else _parse_key(key) for key in contributions}
        finished = {}
        for key, value in contributions.items():
            builder = _KeyBuilder(dim, metric, center, chosen, nlist, min(sample_size, count), gpu)
            starts = range(0, count, chunk)
            for start in _progress.progress(starts, desc=f"index {key}", total=len(starts), enabled=progress):
                builder.add(value[start : start + chunk].detach().float().cpu().numpy())
            finished[key] = builder.finish()
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
            return _contributions(tower, _finite_images(tower, images, function), chosen)

    def _search(self, key: str, prepared: np.ndarray, k: int, function: str) -> SearchResult:
        if not 1 <= k:
            raise ValueError(f"{function}: argument 'k' must be >= 1, got {k}")
        index = self.indexes[key]
        if type(index).__name__ == "IndexFlatIP" and index.ntotal > 0:
            scores, indices = _flat_search(index, prepared, min(k, self.count))
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
        _check_finite(queries, function, name)
        return queries.detach().float().cpu().numpy()

    def search_contributions(self, key: str, contributions: Tensor, k: int = 4) -> SearchResult:
        """Nearest database images of contributions ``[Q, E]`` under ``key`` (centred, normalized as the database)."""
        function = f"{FUNCTION}.search_contributions"
        key = self._key(key, function)
        prepared = _prepare(self._queries(contributions, function, "contributions"), self.means[key], self.metric)
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
        prepared = _prepare(self._queries(directions, function, "directions"), None, self.metric)
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
        indexes = {key: _on_cpu(index) for key, index in self.indexes.items()}
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
        gpu = _gpu_device(device)
        if gpu is not None:
            faiss = _faiss()
            resources = _gpu_resources or faiss.StandardGpuResources()
            fields["indexes"] = {k: faiss.index_cpu_to_gpu(resources, gpu, v) for k, v in fields["indexes"].items()}
        return cls(identity=identity, **fields)


def _flat_search(
    index: Any, queries: np.ndarray, k: int, block_elements: int = 1 << 24
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries [Q, E]`` against a CPU ``IndexFlatIP``'s stored vectors."""
    faiss = _faiss()
    stored = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    keys = torch.from_numpy(stored)  # [K, E], a view of the index's storage
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))  # [Q, E]
    block = max(k, block_elements // max(1, q.shape[0]))
    best_scores = best_indices = None
    for start in range(0, keys.shape[0], block):
        scores = q @ keys[start : start + block].T  # [Q, b]
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        indices = top.indices + start
        if best_scores is not None and best_indices is not None:
            merged = torch.cat([best_scores, top.values], 1).topk(k, dim=1)
            indices = torch.cat([best_indices, indices], 1).gather(1, merged.indices)
            top_values = merged.values
        else:
            top_values = top.values
        best_scores, best_indices = top_values, indices
    assert best_scores is not None and best_indices is not None
    return best_scores.numpy(), best_indices.numpy()


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


def _check_finite(values: Tensor, function: str, name: str) -> None:
    """ValueError when ``values`` holds NaN or Inf (which FAISS would index or search silently)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(
            f"{function}: argument '{name}' must be finite, got {int(bad.sum())} NaN/Inf values of {values.numel()}"
        )


def _finite_images(tower: VisionTower, images: object, function: str) -> Tensor:
    checked = check_images(tower, images, function)
    _check_finite(checked, function, "images")
    return checked


def _check_options(metric: str, kind: str, batch_size: int, sample_size: int, function: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"{function}: argument 'metric' must be one of {METRICS}, got {metric!r}")
    if kind not in KINDS:
        raise ValueError(f"{function}: argument 'kind' must be one of {KINDS}, got {kind!r}")
    if batch_size < 1:
        raise ValueError(f"{function}: argument 'batch_size' must be >= 1, got {batch_size}")
    if sample_size < 1:
        raise ValueError(f"{function}: argument 'sample_size' must be >= 1, got {sample_size}")


def _parse_key(key: str) -> tuple[tuple[int, int], ...]:
    """``"L3H5"`` -> ``((3, 5),)``; other names -> ``()``."""
    if key.startswith("L") and "H" in key:
        layer, _, head = key[1:].partition("H")
        if layer.isdigit() and head.isdigit():
            return ((int(layer), int(head)),)
    return ()
