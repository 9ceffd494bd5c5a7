"""Weight matrices ``[N models, D dims]`` read by row blocks from memory or from disk.

The PCA fit streams a dataset that may not fit in memory. A block of rows read from a
``.safetensors`` or ``.npy`` file is a private memory map of exactly those rows (no copy: the pages
come from the page cache), released with the tensor, so the resident memory of a pass is one
block however large the file.
Both formats are parsed here directly (they are simple and documented): safetensors is an 8-byte
little-endian header length, a JSON header (dtype, shape, byte offsets, string metadata) and the
raw data; ``.npy`` is numpy's header followed by the C-ordered array.

:class:`MatrixWriter` writes the same formats row block by row block (for
:meth:`LoraDataset.write_matrix`); the layout and model names travel in the safetensors metadata
(in a ``<file>.json`` side file for ``.npy``).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .._files import atomic_open, atomic_path

__all__ = ["RowMatrix", "TensorRows", "FileRows", "ConcatRows", "MatrixWriter", "open_rows"]

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
_SAFETENSORS_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
_NUMPY_DTYPES: dict[str, torch.dtype] = {"<f4": torch.float32, "<f8": torch.float64, "<f2": torch.float16}
_HEADER_LIMIT = 100 * 2**20


class RowMatrix(Protocol):
    """A ``[N, D]`` matrix readable by row ranges."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def metadata(self) -> dict[str, str]: ...

    def read(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` as a new ``[stop - start, D]`` CPU tensor of the stored dtype."""
        ...


class TensorRows:
    """An in-memory ``[N, D]`` tensor (or numpy array) as a RowMatrix."""

    def __init__(self, matrix: Tensor | np.ndarray, metadata: dict[str, str] | None = None) -> None:
        tensor = torch.as_tensor(matrix)
        if tensor.dim() != 2:
            raise ValueError(
                f"vision_kernels.weightspace: a weight matrix must be [N, D], got shape {list(tensor.shape)}"
            )
        if not tensor.is_floating_point():
            raise TypeError(f"vision_kernels.weightspace: a weight matrix must be floating point, got {tensor.dtype}")
        self.tensor = tensor
        self.metadata = dict(metadata or {})

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.tensor.shape[0]), int(self.tensor.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    def read(self, start: int, stop: int) -> Tensor:
        return self.tensor[start:stop]


class FileRows:
    """A 2-D float tensor in a ``.safetensors`` or ``.npy`` file, read by positioned reads.

    For safetensors files holding several tensors, ``name`` picks one (default: the only 2-D
    tensor, or the one called ``"weights"``).
    """

    def __init__(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"vision_kernels.weightspace: no weight matrix file {self.path}")
        if sys.byteorder != "little":
            raise RuntimeError("vision_kernels.weightspace: reading weight matrices needs a little-endian machine")
        if self.path.stat().st_size == 0:
            raise ValueError(f"vision_kernels.weightspace: weight matrix file {self.path} is empty (0 bytes)")
        if self.path.suffix == ".safetensors":
            self._open_safetensors(name)
        elif self.path.suffix == ".npy":
            self._open_npy()
        else:
            raise ValueError(f"vision_kernels.weightspace: weight matrix {self.path} must be .safetensors or .npy")
        self._row_bytes = self._shape[1] * torch.empty((), dtype=self._dtype).element_size()
        expected = self._offset + self._shape[0] * self._row_bytes
        if self.path.stat().st_size < expected:
            raise ValueError(
                f"vision_kernels.weightspace: {self.path} is truncated: {self.path.stat().st_size} bytes, "
                f"the header promises {expected}"
            )

    def _open_safetensors(self, name: str | None) -> None:
        where = f"vision_kernels.weightspace: {self.path} is not a safetensors file"
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{where} (only {len(prefix)} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > _HEADER_LIMIT or 8 + length > self.path.stat().st_size:
                raise ValueError(f"{where} (header size {length})")
            try:
                header = json.loads(handle.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{where} (its header is not JSON: {error})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{where} (its header is not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        self.metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
        try:
            matrices = {
                k: v
                for k, v in header.items()
                if len(v["shape"]) == 2 and len(v["data_offsets"]) == 2 and all(int(s) >= 0 for s in v["shape"])
            }
        except (TypeError, KeyError, ValueError):
            raise ValueError(
                f"{where} (damaged header: tensor entries need 'dtype', 'shape', 'data_offsets')"
            ) from None
        if name is None:
            if len(matrices) == 1:
                name = next(iter(matrices))
            elif "weights" in matrices:
                name = "weights"
            else:
                raise ValueError(
                    f"vision_kernels.weightspace: {self.path} holds 2-D tensors {sorted(matrices)}; pass name=..."
                )
        if name not in matrices:
            raise ValueError(
                f"vision_kernels.weightspace: {self.path} has no 2-D tensor '{name}' (has {sorted(matrices)})"
            )
        entry = matrices[name]
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise TypeError(
                f"vision_kernels.weightspace: {self.path}: tensor '{name}' has unsupported dtype {entry['dtype']}"
            )
        self._dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        self._shape = (int(entry["shape"][0]), int(entry["shape"][1]))
        begin, end = (int(o) for o in entry["data_offsets"])
        itemsize = torch.empty((), dtype=self._dtype).element_size()
        if end - begin != self._shape[0] * self._shape[1] * itemsize:
            raise ValueError(
                f"vision_kernels.weightspace: {self.path}: tensor '{name}' of shape {list(self._shape)} "
                f"{entry['dtype']} needs {self._shape[0] * self._shape[1] * itemsize} bytes, "
                f"its data_offsets span {end - begin}"
            )
        self._offset = 8 + length + begin

    def _open_npy(self) -> None:
        with open(self.path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                reader = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran_order, dtype = reader(handle)
            except (ValueError, SyntaxError, TypeError) as error:
                raise ValueError(f"vision_kernels.weightspace: {self.path} is not a .npy file ({error})") from None
            self._offset = handle.tell()
        if fortran_order or len(shape) != 2 or dtype.str not in _NUMPY_DTYPES:
            raise ValueError(
                f"vision_kernels.weightspace: {self.path} must hold a 2-D C-ordered float16/32/64 array, "
                f"got shape {shape}, dtype {dtype}, fortran_order={fortran_order}"
            )
        self._dtype = _NUMPY_DTYPES[dtype.str]
        self._shape = (int(shape[0]), int(shape[1]))
        side = self.path.with_name(self.path.name + ".json")
        self.metadata = {}
        if side.is_file():
            try:
                loaded = json.loads(side.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(
                    f"vision_kernels.weightspace: metadata file {side} is not valid JSON ({error})"
                ) from None
            if not isinstance(loaded, dict):
                raise ValueError(f"vision_kernels.weightspace: metadata file {side} must hold a JSON object")
            self.metadata = {str(k): str(v) for k, v in loaded.items()}

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def read(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` as a tensor over a private memory map of just those rows: no copy
        is made (pages come straight from the page cache), and the mapping goes away with the tensor."""
        start, stop = max(0, start), min(self._shape[0], stop)
        rows = max(0, stop - start)
        if rows == 0:
            return torch.empty((0, self._shape[1]), dtype=self._dtype)
        position = self._offset + start * self._row_bytes
        aligned = position - position % mmap.ALLOCATIONGRANULARITY
        length = position - aligned + rows * self._row_bytes
        flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
        with open(self.path, "rb") as handle:
            mapping = mmap.mmap(
                handle.fileno(), length, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=aligned
            )
        raw = np.frombuffer(mapping, dtype=np.uint8, count=rows * self._row_bytes, offset=position - aligned)
        element = torch.empty((), dtype=self._dtype).element_size()
        words = raw.view({1: np.uint8, 2: np.uint16, 4: np.float32, 8: np.float64}[element])
        return torch.from_numpy(words).view(self._dtype).view(rows, self._shape[1])


class ConcatRows:
    """Several RowMatrix shards stacked along the rows (same D and dtype)."""

    def __init__(self, parts: Sequence[RowMatrix]) -> None:
        if not parts:
            raise ValueError("vision_kernels.weightspace: no weight matrices given")
        dims = {p.shape[1] for p in parts}
        dtypes = {p.dtype for p in parts}
        if len(dims) > 1 or len(dtypes) > 1:
            raise ValueError(f"vision_kernels.weightspace: shards differ in width {sorted(dims)} or dtype {dtypes}")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts]).tolist()
        self.metadata = dict(parts[0].metadata)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.starts[-1]), self.parts[0].shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    def read(self, start: int, stop: int) -> Tensor:
        pieces = []
        for part, first, end in zip(self.parts, self.starts[:-1], self.starts[1:], strict=True):
            lo, hi = max(start, first), min(stop, end)
            if lo < hi:
                pieces.append(part.read(lo - first, hi - first))
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat(pieces) if pieces else torch.empty((0, self.shape[1]), dtype=self.dtype)


def open_rows(source: Any) -> RowMatrix:
    """A RowMatrix from a tensor/array, a file path, a ``w2w collect`` run folder, a list of files, a
    LoraDataset or a RowMatrix."""
    if isinstance(source, torch.Tensor | np.ndarray):
        return TensorRows(source)
    if isinstance(source, str | os.PathLike):
        if Path(source).is_dir():  # a run folder written by ``w2w collect``
            from .collect import open_run_rows

            return open_run_rows(source)
        return FileRows(source)
    if isinstance(source, list | tuple):
        return ConcatRows([open_rows(s) for s in source])
    if hasattr(source, "read") and hasattr(source, "shape"):
        return source  # already a RowMatrix (LoraDataset implements it too)
    raise TypeError(
        "vision_kernels.weightspace: a weight matrix source must be a tensor, array, .safetensors/.npy path, "
        f"list of those, LoraDataset or RowMatrix, got {type(source).__name__}"
    )


class MatrixWriter:
    """Write an ``[N, D]`` matrix to ``.safetensors`` (tensor ``"weights"``) or ``.npy`` block by block.

    Use as a context manager; :meth:`append` takes row blocks in order, and closing checks that
    exactly N rows were written. The rows go to a temporary file beside ``path`` that replaces it
    only when all N rows are in (``vision_kernels._files.atomic_path``): an existing matrix under
    that name survives an error, an interruption or a SIGKILL; a killed writer's temporary is
    removed by the next save into that folder.
    """

    def __init__(
        self,
        path: str | Path,
        rows: int,
        dims: int,
        dtype: torch.dtype = torch.float32,
        metadata: dict[str, str] | None = None,
    ) -> None:
        function = "vision_kernels.weightspace.MatrixWriter"
        self.path = Path(path)
        self.rows, self.dims, self.dtype = rows, dims, dtype
        self.metadata = dict(metadata or {})
        self.written = 0
        if self.path.suffix not in (".safetensors", ".npy"):
            raise ValueError(f"vision_kernels.weightspace: weight matrix {self.path} must be .safetensors or .npy")
        for name, value in (("rows", rows), ("dims", dims)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{function}: argument '{name}' must be an integer >= 0, got {value!r}")
        numpy_dtype = {torch.float32: "<f4", torch.float64: "<f8", torch.float16: "<f2"}.get(dtype)
        if self.path.suffix == ".safetensors" and dtype not in _SAFETENSORS_NAMES:
            raise TypeError(f"vision_kernels.weightspace: cannot store {dtype} in safetensors")
        if self.path.suffix == ".npy" and numpy_dtype is None:
            raise TypeError(f"vision_kernels.weightspace: cannot store {dtype} in .npy (use .safetensors)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        temporary = self._stack.enter_context(atomic_path(self.path, function=function))
        self._handle = self._stack.enter_context(open(temporary, "wb"))
        itemsize = torch.empty((), dtype=dtype).element_size()
        try:
            if self.path.suffix == ".safetensors":
                header: dict[str, Any] = {
                    "weights": {
                        "dtype": _SAFETENSORS_NAMES[dtype],
                        "shape": [rows, dims],
                        "data_offsets": [0, rows * dims * itemsize],
                    }
                }
                if self.metadata:
                    header["__metadata__"] = self.metadata
                text = json.dumps(header, separators=(",", ":")).encode()
                text += b" " * (-len(text) % 8)
                self._handle.write(struct.pack("<Q", len(text)) + text)
            else:
                np.lib.format.write_array_header_2_0(
                    self._handle, {"descr": numpy_dtype, "fortran_order": False, "shape": (rows, dims)}
                )
        except BaseException:
            self._abort()
            raise

    def append(self, block: Tensor) -> None:
        if block.dim() == 1:
            block = block.unsqueeze(0)
        if block.shape[1] != self.dims:
            raise ValueError(
                f"vision_kernels.weightspace: rows of width {block.shape[1]} written to a [N, {self.dims}] matrix"
            )
        if self.written + block.shape[0] > self.rows:
            raise ValueError(
                f"vision_kernels.weightspace: more than the declared {self.rows} rows written to {self.path}"
            )
        data = block.detach().to("cpu", self.dtype).contiguous()
        self._handle.write(data.view(torch.uint8).numpy().data.cast("B"))
        self.written += block.shape[0]

    def _abort(self) -> None:
        """Drop the temporary; the file under the final name (if any) is left as it was."""
        error = RuntimeError("aborted")
        self._stack.__exit__(type(error), error, None)

    def close(self) -> None:
        """Finish: check the row count, then move the matrix (and its ``.npy.json`` side file) in place."""
        if self._handle.closed:
            return
        if self.written != self.rows:
            self._abort()
            raise ValueError(f"vision_kernels.weightspace: {self.path} got {self.written} rows, {self.rows} declared")
        self._handle.flush()
        self._stack.close()  # closes the handle, fsyncs and renames the temporary over self.path
        if self.path.suffix == ".npy" and self.metadata:
            with atomic_open(self.path.with_name(self.path.name + ".json"), "w", encoding="utf-8") as side:
                json.dump(self.metadata, side)

    def __enter__(self) -> MatrixWriter:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
        elif not self._handle.closed:
            self._abort()
