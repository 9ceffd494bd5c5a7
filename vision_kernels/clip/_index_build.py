"""Building the FAISS indexes of a :class:`~vision_kernels.clip.HeadIndex`: preparation, construction, flat search.

A key's vector ``v`` is stored as ``p = (v - mu) / max(|v - mu|, tiny)`` for the cosine metric (``v - mu`` for
``"ip"``; ``mu = 0`` without centring), ``mu`` the float64 mean of the first ``sample`` vectors. Preparing
works in bounded blocks of rows: a CPU flat index is grown once and each block is centred straight into the
index's own storage and normalized there while it is in cache, so a build reads and writes the vectors about
as often as a bare ``IndexFlatIP.add`` of prepared vectors does (no whole-collection copies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import _progress
from ._index_files import faiss_module
from ._index_keys import check_finite

__all__ = ["KeyBuilder", "flat_search", "gpu_device", "index_tensor", "new_index", "on_cpu", "prepare"]

FUNCTION = "vision_kernels.clip.HeadIndex"
BLOCK_ROWS = 256  # rows prepared at once: a block of 512-d float32 rows (512 KiB) stays in cache
_TINY = float(np.finfo(np.float32).tiny)


def faiss() -> Any:
    return faiss_module(FUNCTION)


def _prepare_block(source: np.ndarray, mean: np.ndarray | None, metric: str, out: np.ndarray) -> bool:
    """``out [b, E] = `` the prepared rows of ``source [b, E]`` (see the module docstring); False if NaN/Inf may be in.

    numpy on purpose: one thread per block, no thread-pool hand-offs for blocks this small.
    """
    if mean is not None:
        np.subtract(source, mean, out=out)
    else:
        np.copyto(out, source)
    if metric != "cosine":
        return bool(np.isfinite(out).all())
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]  # [b, 1]
    finite = bool(np.isfinite(norms).all())  # or |v| overflowed: the caller checks the values themselves
    out /= np.maximum(norms, _TINY)
    return finite


def _prepare_rows(source: np.ndarray, mean: np.ndarray | None, metric: str, out: np.ndarray) -> bool:
    """:func:`_prepare_block` over ``source [n, E]`` in blocks of :data:`BLOCK_ROWS` rows."""
    finite = True
    for start in range(0, source.shape[0], BLOCK_ROWS):
        stop = start + BLOCK_ROWS
        finite &= _prepare_block(source[start:stop], mean, metric, out[start:stop])
    return finite


def _as_array(vectors: np.ndarray | Tensor) -> np.ndarray:
    """``vectors`` as a float32 numpy array (no copy for a CPU float32 tensor or array)."""
    if isinstance(vectors, Tensor):
        return vectors.detach().to("cpu", torch.float32).numpy()
    return np.asarray(vectors, dtype=np.float32)


def prepare(vectors: np.ndarray | Tensor, mean: np.ndarray | None, metric: str) -> np.ndarray:
    """Centre (when a mean is given) and, for cosine, L2-normalize rows; a new float32 C-contiguous array."""
    source = _as_array(vectors)
    out = np.empty(source.shape, dtype=np.float32)
    _prepare_rows(source, mean, metric, out)
    return out


def sample_mean(vectors: np.ndarray | Tensor) -> np.ndarray:
    """The mean of ``vectors [n, E]`` (n >= 1) as float32: float32 sums of blocks of rows added in float64."""
    source = _as_array(vectors)
    total = np.zeros(source.shape[1], dtype=np.float64)
    for start in range(0, source.shape[0], BLOCK_ROWS):
        total += source[start : start + BLOCK_ROWS].sum(0)
    return (total / source.shape[0]).astype(np.float32)


_gpu_resources: Any = None


def gpu_device(device: str | torch.device | None) -> int | None:
    """The CUDA ordinal for faiss-gpu, or None to stay on the CPU (no GPU, or faiss without GPU support)."""
    module = faiss()
    if device is None or torch.device(device).type != "cuda":
        return None
    if not hasattr(module, "StandardGpuResources") or module.get_num_gpus() == 0:
        return None
    return torch.device(device).index or 0


def to_gpu(index: Any, gpu: int) -> Any:
    """``index`` copied to the GPU ``gpu`` (one faiss-gpu resources object for the process)."""
    global _gpu_resources
    module = faiss()
    if _gpu_resources is None:
        _gpu_resources = module.StandardGpuResources()
    return module.index_cpu_to_gpu(_gpu_resources, gpu, index)


def new_index(dim: int, kind: str, nlist: int | None, training: np.ndarray, gpu: int | None) -> Any:
    """An empty ``IndexFlatIP`` or an ``IndexIVFFlat`` trained on the prepared ``training`` vectors."""
    module = faiss()
    if kind == "flat":
        index = module.IndexFlatIP(dim)
    else:
        count = len(training)
        cells = nlist or int(4 * math.sqrt(count))
        cells = max(1, min(cells, count // 39))  # FAISS wants >= 39 training points per cell
        quantizer = module.IndexFlatIP(dim)
        index = module.IndexIVFFlat(quantizer, dim, cells, module.METRIC_INNER_PRODUCT)
        index.own_fields = True  # the index owns (and frees) its quantizer
        quantizer.this.disown()
        index.train(training)
    return index if gpu is None else to_gpu(index, gpu)


def on_cpu(index: Any) -> Any:
    """``index`` itself, or its CPU copy when it lives on a GPU."""
    if type(index).__name__.startswith("Gpu"):
        return faiss().index_gpu_to_cpu(index)
    return index


def flat_rows(index: Any) -> np.ndarray:
    """``[ntotal, d]`` a view of a CPU ``IndexFlatIP``'s stored vectors (valid until the index grows)."""
    return faiss().rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def _grow_flat(index: Any, rows: int) -> np.ndarray:
    """Append ``rows`` zero vectors to a CPU ``IndexFlatIP`` (as its ``add`` does) and return a view of them."""
    start = index.ntotal
    index.codes.resize((start + rows) * index.code_size)
    index.ntotal = start + rows
    return flat_rows(index)[start:]


class KeyBuilder:
    """Buffers the first ``sample`` vectors of one key, then fixes the mean, trains and adds."""

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
            self.index.add(prepare(vectors, self.mean, self.metric))

    def _start(self) -> None:
        data = np.concatenate(self.buffer) if self.buffer else np.zeros((0, self.dim), np.float32)
        self.buffer = []
        self.mean = sample_mean(data) if self.center and len(data) else None
        prepared = prepare(data, self.mean, self.metric)
        self.index = new_index(self.dim, self.kind, self.nlist, prepared, self.gpu)
        if len(prepared):
            self.index.add(prepared)

    def finish(self) -> tuple[Any, np.ndarray | None]:
        if self.index is None:
            self._start()
        return self.index, self.mean


def index_tensor(
    value: Tensor,
    *,
    metric: str,
    center: bool,
    kind: str,
    nlist: int | None,
    sample: int,
    gpu: int | None,
    chunk: int,
    progress: bool | None,
    function: str,
    name: str,
) -> tuple[Any, np.ndarray | None]:
    """The index of the vectors ``value [K, E]`` and its mean (see the module docstring), or ValueError on NaN/Inf.

    A CPU flat index is filled in place; other indexes get ``chunk`` prepared rows per ``add`` from one buffer.
    """
    tensor = value.detach().to("cpu", torch.float32)  # no copy for a CPU float32 tensor
    source = tensor.numpy()
    count, dim = source.shape
    mean = sample_mean(source[:sample]) if center else None
    in_place = kind == "flat" and gpu is None
    if not in_place:  # IVF training and GPU adds: check first, the whole tensor once
        check_finite(tensor, function, name)
    training = prepare(source[:sample], mean, metric) if kind == "ivf" else np.zeros((0, dim), np.float32)
    index = new_index(dim, kind, nlist, training, gpu)
    rows = _grow_flat(index, count) if in_place else np.empty((min(chunk, count), dim), dtype=np.float32)
    starts = range(0, count, chunk)
    for start in _progress.progress(starts, desc=f"index {name}", total=len(starts), enabled=progress):
        block = source[start : start + chunk]
        out = rows[start : start + chunk] if in_place else rows[: block.shape[0]]
        if not _prepare_rows(block, mean, metric, out):
            check_finite(tensor, function, name)  # raises with the count of bad values, unless |v| only overflowed
        if not in_place:
            index.add(out)
    return index, mean


def flat_search(
    index: Any, queries: np.ndarray, k: int, block_elements: int = 1 << 24
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries [Q, E]`` against a CPU ``IndexFlatIP``'s stored vectors."""
    keys = torch.from_numpy(flat_rows(index))  # [K, E], a view of the index's storage
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
