"""Sharded, resumable, distributed result folders for dataset-scale runs.

A run maps an ordered list of inputs (image paths, adapter files, row blocks, ...) to results in
fixed-size shards: shard ``k`` holds the results of inputs ``[k * shard_size, (k + 1) * shard_size)``.
The folder::

    RUN/run.json                         what the run is: kind, options, input count and checksum,
                                         shard size, package version (written first)
    RUN/inputs.txt                       the inputs in order, one per line
    RUN/shard-000000.safetensors         the results of shard 0 (written atomically)
    RUN/shard-000000.json                its record: input range, bytes, sha256, caller's record
    RUN/manifest.json                    written last, when every shard is complete

Rules (docs/DESIGN.md section 7):
- Every file is written under a temporary name, fsync'ed and renamed (vision_kernels._files).
- A rerun with the same spec resumes: a shard counts as done only if its record exists and the
  shard's size and sha256 match it; anything else is recomputed, never trusted.
- A rerun with another spec into the same folder is refused unless ``overwrite=True``.
- Under torch.distributed, rank r computes the shards ``k % world == r``; files do not depend on
  the number of ranks, so a 2-rank run writes the same shards as a 1-rank run (and a run may be
  resumed with another number of ranks). For byte-identical shards, compute each shard from its
  own inputs alone (batches starting at the shard's first input).
- Sums over samples are kept per shard (a partial sum in the shard), then summed over shards:
  each rank sums its own and :func:`~vision_kernels.runs.distributed.all_reduce_sum` adds the ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._files import atomic_open, atomic_path, clean_stale_temporaries, contained_path, file_sha256
from .._version import __version__
from . import distributed

__all__ = ["RunSpec", "ShardInfo", "ShardedRun", "RunReader", "FORMAT"]

FORMAT = "vision-kernels-run/1"
_RUN = "run.json"
_MANIFEST = "manifest.json"
_INPUTS = "inputs.txt"


def _shard_name(index: int) -> str:
    return f"shard-{index:06d}.safetensors"


def _record_name(index: int) -> str:
    return f"shard-{index:06d}.json"


def inputs_sha256(inputs: Sequence[str]) -> str:
    """Checksum of an ordered input list (order matters)."""
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(item.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class RunSpec:
    """What determines a run's results. Two runs with equal specs write identical shards.

    ``options`` must be JSON-serializable (model name and weight fingerprint, layers, dtype, ...).
    """

    kind: str
    options: dict[str, Any]
    inputs: Sequence[str]
    shard_size: int

    def __post_init__(self) -> None:
        if not isinstance(self.shard_size, int) or isinstance(self.shard_size, bool) or self.shard_size <= 0:
            raise ValueError(f"RunSpec: shard_size must be a positive integer, got {self.shard_size!r}")
        for item in self.inputs:
            if "\n" in item or "\r" in item:
                raise ValueError(f"RunSpec: inputs must not contain line breaks, got {item!r}")
        json.dumps(self.options)  # fails early with TypeError for values JSON cannot hold

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "options": json.loads(json.dumps(self.options)),
            "inputs": {"count": len(self.inputs), "sha256": inputs_sha256(self.inputs), "file": _INPUTS},
            "shard_size": self.shard_size,
        }


@dataclass(frozen=True)
class ShardInfo:
    """Shard ``index`` covers inputs ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


def _shards(count: int, size: int) -> list[ShardInfo]:
    return [ShardInfo(k, start, min(start + size, count)) for k, start in enumerate(range(0, count, size))]


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    found: list[str] = []
    for key in keys:
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return found


def _read_json(path: Path, function: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{function}: {str(path)!r} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{function}: {str(path)!r} must hold a JSON object, got {type(value).__name__}")
    return value


class ShardedRun:
    """Writer side of a run folder: which shards are left, write one, finish with a manifest.

    Every rank constructs it with the same spec; rank 0 prepares the folder, the others wait.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        spec: RunSpec,
        *,
        overwrite: bool = False,
        ranks: distributed.Ranks | None = None,
        function: str = "ShardedRun",
    ) -> None:
        self.folder = Path(folder)
        self.spec = spec
        self.ranks = ranks or distributed.current()
        self.function = function
        self.shards = _shards(len(spec.inputs), spec.shard_size)
        error: BaseException | None = None
        if self.ranks.main:
            try:
                self._prepare(overwrite)
            except BaseException as caught:  # reported on every rank below
                error = caught
        message = distributed.broadcast_object(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise FileExistsError(message)

    # -- folder preparation (rank 0) -------------------------------------------------------
    def _owned_files(self) -> list[Path]:
        names = {_RUN, _MANIFEST, _INPUTS}
        return [
            p
            for p in self.folder.iterdir()
            if p.name in names or (p.name.startswith("shard-") and p.suffix in (".safetensors", ".json"))
        ]

    def _prepare(self, overwrite: bool) -> None:
        header = self.spec.header()
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.function}: output {str(self.folder)!r} exists and is not a folder")
        if not self.folder.exists():
            parent = self.folder.parent
            if not parent.is_dir():
                raise FileNotFoundError(
                    f"{self.function}: cannot create {str(self.folder)!r}: its folder {str(parent)!r} does not exist"
                )
            self.folder.mkdir()
        clean_stale_temporaries(self.folder)
        run_file = self.folder / _RUN
        if run_file.exists():
            old = _read_json(run_file, self.function)
            old.pop("package_version", None)
            old.pop("created", None)
            differences = _differences(old, header)
            if differences and not overwrite:
                raise FileExistsError(
                    f"{self.function}: {str(self.folder)!r} holds a run with other settings ("
                    + "; ".join(differences[:4])
                    + (f"; {len(differences) - 4} more" if len(differences) > 4 else "")
                    + "): choose another folder or overwrite it"
                )
            if differences:
                for path in self._owned_files():
                    path.unlink()
            else:
                return  # same run: resume
        elif any(not p.name.startswith(".") for p in self.folder.iterdir()):
            raise FileExistsError(
                f"{self.function}: {str(self.folder)!r} is not empty and holds no run ({_RUN} missing); "
                "choose a new or empty folder"
            )
        with atomic_open(self.folder / _INPUTS, "w", encoding="utf-8", function=self.function) as handle:
            handle.writelines(f"{item}\n" for item in self.spec.inputs)
        header["package_version"] = __version__
        header["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with atomic_open(run_file, "w", encoding="utf-8", function=self.function) as handle:
            json.dump(header, handle, indent=2)

    # -- shards -----------------------------------------------------------------------------
    def mine(self) -> list[ShardInfo]:
        """The shards this rank computes (``index % world == rank``)."""
        return distributed.owned(self.shards, self.ranks)

    def record(self, index: int) -> dict[str, Any] | None:
        """The record of a complete shard, or None if it is missing, partial or damaged."""
        shard = self.shards[index]
        record_path = self.folder / _record_name(index)
        data_path = self.folder / _shard_name(index)
        if not (record_path.is_file() and data_path.is_file()):
            return None
        try:
            record = _read_json(record_path, self.function)
        except ValueError:
            return None
        if (
            record.get("start") != shard.start
            or record.get("stop") != shard.stop
            or record.get("bytes") != data_path.stat().st_size
            or record.get("sha256") != file_sha256(data_path)
        ):
            return None
        return record

    def pending(self) -> list[ShardInfo]:
        """This rank's shards that are not complete (missing, partial, or failing their checksum)."""
        return [shard for shard in self.mine() if self.record(shard.index) is None]

    def inputs(self, shard: ShardInfo) -> Sequence[str]:
        return self.spec.inputs[shard.start : shard.stop]

    def write(
        self,
        shard: ShardInfo,
        tensors: dict[str, Tensor],
        *,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Save one shard's tensors (safetensors) and then its record, each atomically.

        ``record`` is the caller's JSON-able note for this shard (e.g. unreadable inputs skipped);
        it is kept in the shard's record and gathered into the manifest.
        """
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        # One metadata key: safetensors stores metadata in a hash map, so several keys would come out
        # in a different order from run to run and break byte-identical shards.
        note = {"kind": self.spec.kind, "shard": shard.index, "start": shard.start, "stop": shard.stop}
        metadata = {"vision_kernels": json.dumps(note, sort_keys=True)}
        data_path = self.folder / _shard_name(shard.index)
        with atomic_path(data_path, function=self.function) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
        entry = {
            "index": shard.index,
            "start": shard.start,
            "stop": shard.stop,
            "file": data_path.name,
            "bytes": data_path.stat().st_size,
            "sha256": file_sha256(data_path),
            "record": record or {},
        }
        with atomic_open(self.folder / _record_name(shard.index), "w", encoding="utf-8", function=self.function) as f:
            json.dump(entry, f, indent=1)

    def read(self, index: int) -> dict[str, Tensor]:
        """The tensors of a complete shard (any rank's), checked against its record."""
        if self.record(index) is None:
            raise ValueError(f"{self.function}: shard {index} of {str(self.folder)!r} is missing or damaged")
        from safetensors.torch import load_file

        return load_file(str(self.folder / _shard_name(index)))

    def finalize(self, extra: dict[str, Any] | None = None) -> Path:
        """Wait for all ranks, check every shard, and write ``manifest.json`` (rank 0). Returns its path."""
        distributed.barrier()
        error: str | None = None
        if self.ranks.main:
            records = []
            for shard in self.shards:
                record = self.record(shard.index)
                if record is None:
                    error = (
                        f"{self.function}: shard {shard.index} of {str(self.folder)!r} is missing after all ranks "
                        "finished"
                    )
                    break
                records.append(record)
            if error is None:
                manifest = _read_json(self.folder / _RUN, self.function)
                manifest["shards"] = records
                manifest["extra"] = json.loads(json.dumps(extra or {}))
                manifest["completed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                manifest["world_size"] = self.ranks.world
                with atomic_open(self.folder / _MANIFEST, "w", encoding="utf-8", function=self.function) as f:
                    json.dump(manifest, f, indent=1)
        error = distributed.broadcast_object(error)
        if error is not None:
            raise RuntimeError(error)
        distributed.barrier()
        return self.folder / _MANIFEST


@dataclass
class RunReader:
    """Reader side: a finished run folder, validated against its manifest before anything is read."""

    folder: Path
    manifest: dict[str, Any] = field(repr=False)
    function: str = "RunReader"

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, kind: str | None = None, function: str = "RunReader") -> RunReader:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{function}: no run folder at {str(folder)!r}")
        path = folder / _MANIFEST
        if not path.is_file():
            hint = " (the run is unfinished: rerun its command to resume it)" if (folder / _RUN).is_file() else ""
            raise FileNotFoundError(f"{function}: {str(folder)!r} has no {_MANIFEST}{hint}")
        manifest = _read_json(path, function)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{function}: {str(path)!r} has format {manifest.get('format')!r}, expected {FORMAT!r}")
        if kind is not None and manifest.get("kind") != kind:
            raise ValueError(f"{function}: {str(folder)!r} holds a {manifest.get('kind')!r} run, expected {kind!r}")
        reader = cls(folder, manifest, function)
        reader._check_structure()
        return reader

    def _check_structure(self) -> None:
        shards = self.manifest.get("shards")
        count = self.manifest.get("inputs", {}).get("count")
        if not isinstance(shards, list) or not isinstance(count, int):
            raise ValueError(
                f"{self.function}: {str(self.folder)!r}: manifest field 'shards' or 'inputs.count' is damaged"
            )
        expected = 0
        for position, record in enumerate(shards):
            if not isinstance(record, dict) or record.get("index") != position or record.get("start") != expected:
                raise ValueError(f"{self.function}: {str(self.folder)!r}: manifest shard {position} is out of order")
            path = contained_path(self.folder, record.get("file", ""), function=self.function, field="shard file")
            if not path.is_file():
                raise FileNotFoundError(f"{self.function}: {str(self.folder)!r}: shard file {path.name!r} is missing")
            if path.stat().st_size != record.get("bytes"):
                raise ValueError(
                    f"{self.function}: {str(self.folder)!r}: shard file {path.name!r} has {path.stat().st_size} bytes, "
                    f"the manifest says {record.get('bytes')}"
                )
            expected = int(record["stop"])
        if expected != count:
            raise ValueError(
                f"{self.function}: {str(self.folder)!r}: shards cover {expected} inputs, the manifest says {count}"
            )

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.manifest["options"])

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.manifest.get("extra", {}))

    @property
    def shards(self) -> list[ShardInfo]:
        return [ShardInfo(r["index"], r["start"], r["stop"]) for r in self.manifest["shards"]]

    def records(self) -> list[dict[str, Any]]:
        """The callers' per-shard records, in shard order."""
        return [dict(r.get("record", {})) for r in self.manifest["shards"]]

    def inputs(self) -> list[str]:
        path = self.folder / _INPUTS
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            items = handle.read().splitlines()
        expected = self.manifest["inputs"]
        if len(items) != expected["count"] or inputs_sha256(items) != expected["sha256"]:
            raise ValueError(f"{self.function}: {str(path)!r} does not match the manifest's input count/checksum")
        return items

    def read(self, index: int, *, verify: bool = False) -> dict[str, Tensor]:
        """Tensors of shard ``index`` (``verify`` also checks its sha256)."""
        from safetensors.torch import load_file

        record = self.manifest["shards"][index]
        path = contained_path(self.folder, record["file"], function=self.function, field="shard file")
        if verify and file_sha256(path) != record["sha256"]:
            raise ValueError(f"{self.function}: shard file {str(path)!r} fails its checksum (damaged or changed)")
        return load_file(str(path))

    def iter_shards(
        self, indices: Sequence[int] | None = None, *, verify: bool = False
    ) -> Iterator[tuple[ShardInfo, dict[str, Tensor]]]:
        shards = self.shards
        for index in range(len(shards)) if indices is None else indices:
            yield shards[index], self.read(index, verify=verify)

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest (raises ValueError on the first mismatch)."""
        for index in range(len(self.shards)):
            record = self.manifest["shards"][index]
            path = contained_path(self.folder, record["file"], function=self.function, field="shard file")
            if file_sha256(path) != record["sha256"]:
                raise ValueError(f"{self.function}: shard file {str(path)!r} fails its checksum (damaged or changed)")

    def concatenated(self, name: str) -> Tensor:
        """Tensor ``name`` of every shard concatenated along dim 0 (for small results and tests)."""
        parts = [tensors[name] for _, tensors in self.iter_shards()]
        if not parts:
            raise ValueError(f"{self.function}: {str(self.folder)!r} has no shards")
        return torch.cat(parts)
