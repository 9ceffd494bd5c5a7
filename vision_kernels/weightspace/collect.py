"""Collecting a folder of LoRA adapters into a sharded, resumable weight-matrix run (``w2w collect``).

``ADAPTERS/`` holds one entry per customized model: a sub-folder with a peft or diffusers adapter
(see :mod:`.adapters`) or a ``.safetensors`` adapter file. :func:`collect_adapters` flattens every
adapter in one recorded :class:`LoraLayout` and writes them as row blocks with
:class:`vision_kernels.runs.ShardedRun` (docs/DESIGN.md section 7)::

    weights/run.json, inputs.txt          the adapter names in natural order, the layout, the dtype
    weights/shard-000000.safetensors      "weights" [n, D] (float16 by default), "rows" [n] (input
                                          index of each row), "attributes" [n, A] float64 (optional)
    weights/shard-000000.json             record: names of the rows, skipped adapters with the reason
    weights/manifest.json                 written last

A shard is a block of ``shard_size`` consecutive adapters. An adapter that cannot be read, holds
NaN/Inf, or does not match the layout (another rank, alpha, module set or shape) is skipped and
listed with the reason in its shard's record: never fatal. Under torchrun each rank collects the
shards ``k % world == rank``; a rerun resumes after the last complete shard.

The reference layout is the one of the first adapter (in natural name order) that reads cleanly,
or of ``reference`` when given. Attributes come from a CSV file with a header row: the column
``name`` (or the first column) holds the model name (the adapter's folder or file name without
``.safetensors``), every other column a number per model (empty: unknown, NaN).

:func:`open_run_rows` reads a finished run back as a :class:`RowMatrix` for :func:`fit_streaming`
(zero-copy row blocks of the shards, names, layout and attributes).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import file_sha256, is_temporary_name
from .._progress import progress
from ..runs import RunReader, RunSpec, ShardedRun, distributed
from .adapters import read_adapter
from .dataset import natural_key
from .layout import LoraLayout
from .storage import ConcatRows, FileRows

__all__ = [
    "KIND",
    "CollectResult",
    "RunRows",
    "collect_adapters",
    "list_adapters",
    "model_name",
    "open_run_rows",
    "read_attributes",
]

KIND = "vision_kernels.w2w.collect"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_FUNCTION = "vision_kernels.weightspace.collect_adapters"


def list_adapters(folder: str | os.PathLike[str]) -> list[Path]:
    """Every non-hidden sub-folder and ``.safetensors`` file of ``folder``, in natural name order
    (``model2`` before ``model10``). Entries that hold no adapter are kept: collecting lists them
    as skipped with the reason."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{_FUNCTION}: argument 'adapters' must be a folder of adapters, "
            + (f"got the file {str(root)!r}" if root.exists() else f"{str(root)!r} does not exist")
        )
    entries = [
        p
        for p in root.iterdir()
        if not p.name.startswith(".") and not is_temporary_name(p.name) and (p.is_dir() or p.suffix == ".safetensors")
    ]
    if not entries:
        raise ValueError(f"{_FUNCTION}: argument 'adapters': {str(root)!r} holds no adapter folders or files")
    return sorted(entries, key=lambda p: natural_key(p.name))


def model_name(path: Path) -> str:
    """The model's name: its folder name, or its file name without ``.safetensors``."""
    return path.stem if path.is_file() or path.suffix == ".safetensors" else path.name


def read_attributes(path: str | os.PathLike[str]) -> tuple[list[str], dict[str, list[float]]]:
    """``(attribute names, {model name: values})`` from a CSV with a header row (see the module docstring).

    Raises ValueError naming the file, line and column for a non-numeric value, a duplicate model
    or a row of the wrong length.
    """
    function = "vision_kernels.weightspace.read_attributes"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{function}: no attribute file {str(path)!r}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise ValueError(f"{function}: {str(path)!r} needs a header row and at least one model row")
    header = [cell.strip() for cell in rows[0]]
    key = header.index("name") if "name" in header else 0
    names = [h for i, h in enumerate(header) if i != key]
    if not names or any(not h for h in names) or len(set(names)) != len(names):
        raise ValueError(
            f"{function}: {str(path)!r}: the header must name one model column and distinct attribute columns, "
            f"got {header}"
        )
    values: dict[str, list[float]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{function}: {str(path)!r} line {line}: {len(row)} fields, the header has {len(header)}")
        model = row[key].strip()
        if model in values:
            raise ValueError(f"{function}: {str(path)!r} line {line}: model {model!r} appears twice")
        numbers = []
        for column, cell in enumerate(row):
            if column == key:
                continue
            text = cell.strip()
            try:
                number = float(text) if text else math.nan
            except ValueError:
                raise ValueError(
                    f"{function}: {str(path)!r} line {line}, column {header[column]!r}: expected a number, got {text!r}"
                ) from None
            if math.isinf(number):
                raise ValueError(f"{function}: {str(path)!r} line {line}, column {header[column]!r}: infinite value")
            numbers.append(number)
        values[model] = numbers
    return names, values


@dataclass
class CollectResult:
    """What :func:`collect_adapters` did: the run folder, the models kept and the ones skipped."""

    folder: Path
    layout: LoraLayout
    models: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _reference_layout(adapters: Sequence[Path], reference: Path | None) -> tuple[LoraLayout, str]:
    if reference is not None:
        return read_adapter(reference).layout, str(reference)
    reasons = []
    for path in adapters:
        try:
            return read_adapter(path).layout, path.name
        except (ValueError, OSError, KeyError) as error:
            reasons.append(f"{path.name}: {error}")
            if len(reasons) >= 20:
                break
    raise ValueError(
        f"{_FUNCTION}: no adapter could be read to fix the layout (first errors: {'; '.join(reasons[:3])})"
    )


def _read_row(path: Path, layout: LoraLayout) -> tuple[Tensor | None, str]:
    """The adapter's ``[D]`` vector, or None and the reason it is skipped."""
    try:
        adapter = read_adapter(path)
    except (ValueError, OSError, KeyError) as error:
        return None, " ".join(str(error).split())
    except Exception as error:  # noqa: BLE001 - a damaged file may raise anything from safetensors; never fatal
        return None, f"{type(error).__name__}: {' '.join(str(error).split())}"
    difference = layout.difference(adapter.layout)
    if difference is not None:
        return None, f"does not match the layout: {difference}"
    return adapter.vector(), ""


def collect_adapters(
    adapters: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    attributes: str | os.PathLike[str] | None = None,
    dtype: str = "float16",
    shard_size: int = 256,
    reference: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> CollectResult:
    """Flatten every adapter of ``adapters`` into row-block shards in the run folder ``out``.

    See the module docstring for the folder and the rules. ``dtype``: storage of the rows
    (``float16`` halves the disk of ``float32``; weights2weights' LoRAs are well within its range).
    Under torch.distributed every rank calls it with the same arguments.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"{_FUNCTION}: argument 'dtype' must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not isinstance(shard_size, int) or shard_size <= 0:
        raise ValueError(f"{_FUNCTION}: argument 'shard_size' must be a positive integer, got {shard_size!r}")
    root = Path(adapters)
    entries = list_adapters(root)
    attribute_names: list[str] = []
    table: dict[str, list[float]] = {}
    options: dict[str, Any] = {"adapters": str(root.resolve()), "dtype": dtype}
    if attributes is not None:
        attribute_names, table = read_attributes(attributes)
        options["attributes"] = {"names": attribute_names, "sha256": file_sha256(attributes)}
    layout, source = _reference_layout(entries, Path(reference) if reference is not None else None)
    options["layout"] = json.loads(layout.to_json())
    options["layout_from"] = source
    spec = RunSpec(KIND, options, [p.name for p in entries], shard_size)
    run = ShardedRun(out, spec, overwrite=overwrite, function=_FUNCTION)
    storage = _DTYPES[dtype]
    ok = True
    try:
        for shard in progress(run.pending(), desc="collecting adapters", enabled=show_progress):
            vectors, indices, names, labels, skipped = [], [], [], [], []
            for offset, name in enumerate(run.inputs(shard)):
                path = root / name
                vector, reason = _read_row(path, layout)
                if vector is None:
                    skipped.append({"name": name, "reason": reason})
                    continue
                vectors.append(vector)
                indices.append(shard.start + offset)
                names.append(model_name(path))
                if attribute_names:
                    labels.append(table.get(model_name(path), [math.nan] * len(attribute_names)))
            weights = torch.stack(vectors) if vectors else torch.zeros((0, layout.dim))  # [n, D]
            if bool((weights.abs() > torch.finfo(storage).max).any()):
                raise ValueError(f"{_FUNCTION}: weights exceed the range of {dtype}; collect with dtype='float32'")
            tensors = {"weights": weights.to(storage), "rows": torch.tensor(indices, dtype=torch.int64)}
            if attribute_names:
                tensors["attributes"] = torch.tensor(labels, dtype=torch.float64).reshape(-1, len(attribute_names))
            run.write(shard, tensors, record={"names": names, "skipped": skipped})
    except BaseException:
        ok = False
        raise
    finally:
        if not distributed.all_ranks_ok(ok) and ok:
            raise RuntimeError(f"{_FUNCTION}: collecting failed on another rank (see its message)")
    run.finalize({"layout": json.loads(layout.to_json()), "attributes": attribute_names})
    reader = RunReader.open(out, kind=KIND, function=_FUNCTION)
    records = reader.records()
    skipped_all = [item for record in records for item in record.get("skipped", [])]
    models = sum(len(record.get("names", [])) for record in records)
    return CollectResult(Path(out), layout, models, skipped_all)


class RunRows:
    """A collected run (:func:`collect_adapters`) as a ``[N, D]`` RowMatrix of its usable models.

    Row blocks are read straight from the shard files (no copy); ``metadata`` carries the layout
    and the model names (as :meth:`LoraDataset.write_matrix` does), ``attributes`` the per-model
    attribute values (``{name: [N] float64}``) or None, ``skipped`` the adapters left out.
    """

    def __init__(self, folder: str | os.PathLike[str], *, verify: bool = False) -> None:
        function = "vision_kernels.weightspace.open_run_rows"
        reader = RunReader.open(folder, kind=KIND, function=function)
        if verify:
            reader.verify()
        self.folder = Path(folder)
        options = reader.options
        try:
            self.layout = LoraLayout.from_json(json.dumps(options["layout"]))
            dtype = _DTYPES[options["dtype"]]
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(
                f"{function}: {str(folder)!r}: run.json field 'layout' or 'dtype' is damaged ({error})"
            ) from None
        attribute_names = list(options.get("attributes", {}).get("names", []))
        parts: list[FileRows] = []
        names: list[str] = []
        labels: list[Tensor] = []
        self.skipped: list[dict[str, str]] = []
        for shard, record in zip(reader.shards, reader.records(), strict=True):
            entry = reader.manifest["shards"][shard.index]
            path = self.folder / entry["file"]
            rows = FileRows(path, name="weights")
            shard_names = record.get("names", [])
            where = f"{function}: {str(folder)!r}: shard {shard.index}"
            if rows.shape[1] != self.layout.dim or rows.dtype != dtype:
                raise ValueError(
                    f"{where}: weights are [{rows.shape[0]}, {rows.shape[1]}] {rows.dtype}, the run records "
                    f"[n, {self.layout.dim}] {dtype}"
                )
            if not isinstance(shard_names, list) or len(shard_names) != rows.shape[0]:
                raise ValueError(f"{where}: {rows.shape[0]} rows but its record names {len(shard_names)} models")
            if rows.shape[0] > shard.count:
                raise ValueError(f"{where}: {rows.shape[0]} rows for {shard.count} adapters")
            if attribute_names:
                labels.append(_shard_attributes(path, rows.shape[0], len(attribute_names), where))
            names += [str(n) for n in shard_names]
            self.skipped += list(record.get("skipped", []))
            if rows.shape[0]:
                parts.append(rows)
        if len(names) < 1:
            raise ValueError(f"{function}: {str(folder)!r} holds no usable adapter ({len(self.skipped)} skipped)")
        self._rows = ConcatRows(parts)
        self.names = names
        self.metadata = {"layout": self.layout.to_json(), "names": json.dumps(names)}
        self.attributes: dict[str, Tensor] | None = None
        if attribute_names:
            table = torch.cat(labels)  # [N, A]
            self.attributes = {name: table[:, i].clone() for i, name in enumerate(attribute_names)}

    @property
    def shape(self) -> tuple[int, int]:
        return self._rows.shape

    @property
    def dtype(self) -> torch.dtype:
        return self._rows.dtype

    def read(self, start: int, stop: int) -> Tensor:
        return self._rows.read(start, stop)


def _shard_attributes(path: Path, rows: int, count: int, where: str) -> Tensor:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        if "attributes" not in handle.keys():  # noqa: SIM118
            raise ValueError(f"{where}: the run records attributes but the shard has none")
        values = handle.get_tensor("attributes")
    if values.dtype != torch.float64 or tuple(values.shape) != (rows, count):
        raise ValueError(
            f"{where}: attributes are {list(values.shape)} {values.dtype}, expected [{rows}, {count}] float64"
        )
    return values


def open_run_rows(folder: str | os.PathLike[str], *, verify: bool = False) -> RunRows:
    """A finished ``w2w collect`` run folder as a RowMatrix for :func:`fit_streaming` (``verify``
    also checks every shard's sha256)."""
    return RunRows(folder, verify=verify)
