"""The folder format of a :class:`vision_kernels.clip.HeadIndex`: atomic writing and validated reading.

A saved index is a folder::

    DB/meta.json          format, version, model identity, keys, file names, metric, kind, dim, count, ids
    DB/means.npz          the per-key centring means (float32 ``[dim]`` each, no pickle)
    DB/index_0000.faiss   one FAISS index per key (``IndexFlatIP`` or ``IndexIVFFlat``)

Writing builds the whole folder under a temporary name and swaps it in (:func:`vision_kernels._files.atomic_folder`):
a process killed during a save leaves the previous index loadable. Reading trusts nothing: every field of
``meta.json`` is type-checked, every file name must stay inside the folder, the FAISS files' sizes are checked
against ``count x dim`` before FAISS reads them, and the indexes' dimension, size, metric and kind against the
metadata. Any problem is one ValueError (FileNotFoundError for a missing file) naming the folder and the field.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _optional
from .._files import atomic_folder, contained_path

__all__ = ["read_index_folder", "write_index_folder", "FORMAT", "VERSION"]

FORMAT = "vision_kernels.HeadIndex"
VERSION = 1
_META = "meta.json"
_MEANS = "means.npz"
_KINDS = ("flat", "ivf")
_METRICS = ("cosine", "ip")


def faiss_module(feature: str = "vision_kernels.clip.HeadIndex") -> Any:
    """The faiss module, or MissingDependencyError naming the extra that installs it."""
    return _optional.require("faiss", feature=feature)


def write_index_folder(
    path: str | Path,
    meta: dict[str, Any],
    indexes: Mapping[str, Any],
    means: Mapping[str, np.ndarray | None],
    function: str,
) -> Path:
    """Write ``meta`` (without ``files``/``means``), the CPU ``indexes`` and ``means`` into the folder ``path``.

    The folder is replaced as a whole. An existing folder that is not an index (no meta.json) and not
    empty is refused rather than replaced, so a mistyped path cannot delete a user's folder.
    """
    faiss = faiss_module(function)
    folder = Path(path)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / _META).is_file():
        raise FileExistsError(
            f"{function}: argument 'path' {str(folder)!r} is a folder that holds no index (no {_META}) and is "
            "not empty; choose a new or empty folder"
        )
    with atomic_folder(folder, function=function) as temporary:
        files, mean_names, arrays = {}, {}, {}
        for position, (key, index) in enumerate(indexes.items()):
            files[key] = f"index_{position:04d}.faiss"
            faiss.write_index(index, str(temporary / files[key]))
            mean = means.get(key)
            if mean is not None:  # positional names: user group names may collide with savez's keywords
                mean_names[key] = f"mean_{position:04d}"
                arrays[mean_names[key]] = np.asarray(mean, dtype=np.float32)
        np.savez(temporary / _MEANS, **arrays)  # type: ignore[arg-type]
        full = {**meta, "files": files, "means": mean_names}
        (temporary / _META).write_text(json.dumps(full, indent=1, default=str))
    return folder


class _Checker:
    """Field checks of one folder's meta.json; every failure names the folder and the field."""

    def __init__(self, folder: Path, meta: dict[str, Any], function: str) -> None:
        self.folder, self.meta, self.function = folder, meta, function

    def fail(self, field: str, expected: str, got: object) -> ValueError:
        return ValueError(
            f"{self.function}: index folder {str(self.folder)!r} is damaged: in {_META}, field {field!r} must be "
            f"{expected}, got {_short(got)}"
        )

    def get(self, field: str) -> Any:
        if field not in self.meta:
            raise ValueError(f"{self.function}: index folder {str(self.folder)!r} is damaged: {_META} has no "
                             f"field {field!r}")  # fmt: skip
        return self.meta[field]

    def integer(self, field: str, low: int) -> int:
        value = self.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self.fail(field, f"an integer >= {low}", value)
        return value

    def choice(self, field: str, choices: Sequence[str]) -> str:
        value = self.get(field)
        if value not in choices:
            raise self.fail(field, f"one of {tuple(choices)}", value)
        return str(value)

    def boolean(self, field: str) -> bool:
        value = self.get(field)
        if not isinstance(value, bool):
            raise self.fail(field, "true or false", value)
        return value

    def string_map(self, field: str) -> dict[str, str]:
        value = self.get(field)
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise self.fail(field, "an object of strings", value)
        return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_meta(folder: Path, function: str) -> dict[str, Any]:
    if not folder.is_dir():
        problem = "not a folder" if folder.exists() else "no such folder"
        raise FileNotFoundError(
            f"{function}: argument 'path' must be a folder written by HeadIndex.save, got {str(folder)!r} ({problem})"
        )
    path = folder / _META
    if not path.is_file():
        raise FileNotFoundError(f"{function}: argument 'path' must be a folder written by HeadIndex.save, got "
                                f"{str(folder)!r} (no {_META})")  # fmt: skip
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{function}: index folder {str(folder)!r} is damaged: {_META} is not valid JSON "
                         f"({error})") from None  # fmt: skip
    if not isinstance(meta, dict):
        raise ValueError(f"{function}: index folder {str(folder)!r} is damaged: {_META} must hold a JSON object, "
                         f"got {type(meta).__name__}")  # fmt: skip
    return meta


def _keys(check: _Checker, files: dict[str, str]) -> dict[str, tuple[tuple[int, int], ...]]:
    value = check.get("keys")
    if not isinstance(value, dict) or set(value) != set(files):
        raise check.fail("keys", f"an object with the keys of 'files' {sorted(files)}", value)
    keys = {}
    for key, pairs in value.items():
        good = isinstance(pairs, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                        for x in p)
            for p in pairs
        )  # fmt: skip
        if not good:
            raise check.fail(f"keys.{key}", "a list of [layer, head] pairs of integers >= 0", pairs)
        keys[key] = tuple((int(p[0]), int(p[1])) for p in pairs)
    return keys


def _read_faiss(path: Path, key: str, check: _Checker, kind: str, dim: int, count: int) -> Any:
    """Read one FAISS file after a size check, then check its type, dimension, size and metric."""
    faiss = faiss_module(check.function)
    size = path.stat().st_size
    vectors = count * dim * 4
    if size < vectors or (kind == "flat" and size > vectors + 4096):
        raise ValueError(
            f"{check.function}: index folder {str(check.folder)!r} is damaged: FAISS file {path.name!r} of key "
            f"{key!r} has {size} bytes, which cannot hold {count} vectors of dimension {dim} ({kind})"
        )
    try:
        index = faiss.read_index(str(path))
    except Exception as error:  # noqa: BLE001 - faiss raises RuntimeError with a C++ trace for damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{check.function}: index folder {str(check.folder)!r} is damaged: FAISS cannot read "
                         f"{path.name!r} of key {key!r} ({first[:120]})") from None  # fmt: skip
    expected_type = "IndexFlatIP" if kind == "flat" else "IndexIVFFlat"
    problems = []
    if type(index).__name__ != expected_type:
        problems.append(f"is a {type(index).__name__}, expected {expected_type} (kind {kind!r})")
    if index.d != dim:
        problems.append(f"has dimension {index.d}, 'dim' says {dim}")
    if index.ntotal != count:
        problems.append(f"holds {index.ntotal} vectors, 'count' says {count}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problems.append("does not use the inner-product metric")
    if problems:
        raise ValueError(f"{check.function}: index folder {str(check.folder)!r} is damaged: FAISS file "
                         f"{path.name!r} of key {key!r} " + "; ".join(problems))  # fmt: skip
    return index


def _means(folder: Path, check: _Checker, files: dict[str, str], dim: int, center: bool) -> dict[str, Any]:
    names = check.string_map("means")
    if not set(names) <= set(files):
        raise check.fail("means", f"an object whose keys are keys of 'files' {sorted(files)}", names)
    if center and set(names) != set(files):
        raise check.fail("means", "one mean per key (the index is centred)", names)
    path = contained_path(folder, _MEANS, function=check.function, field="means file")
    if not path.is_file():
        raise FileNotFoundError(f"{check.function}: index folder {str(folder)!r} is damaged: {_MEANS} is missing")
    try:
        with np.load(path, allow_pickle=False) as stored:
            available = list(stored.files)
            arrays = {key: stored[name] for key, name in names.items() if name in available}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:  # ValueError: pickled (object) arrays
        raise ValueError(f"{check.function}: index folder {str(folder)!r} is damaged: {_MEANS} cannot be read "
                         f"({error})") from None  # fmt: skip
    means: dict[str, np.ndarray | None] = {key: None for key in files}
    for key, name in names.items():
        if key not in arrays:
            raise check.fail(f"means.{key}", f"an array name in {_MEANS} {available}", name)
        array = arrays[key]
        if array.dtype != np.float32 or array.shape != (dim,) or not np.isfinite(array).all():
            raise ValueError(
                f"{check.function}: index folder {str(folder)!r} is damaged: mean {name!r} of key {key!r} in "
                f"{_MEANS} must be finite float32 [{dim}], got {array.dtype} {list(array.shape)}"
            )
        means[key] = array
    return means


def read_index_folder(path: str | Path, function: str) -> dict[str, Any]:
    """The validated contents of an index folder: keyword arguments of ``HeadIndex(...)`` (CPU indexes)."""
    folder = Path(path)
    meta = _read_meta(folder, function)
    check = _Checker(folder, meta, function)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{function}: {str(folder)!r} holds format {meta.get('format')!r} version "
                         f"{meta.get('version')!r}; expected {FORMAT!r} version {VERSION}")  # fmt: skip
    identity = check.get("identity")
    if not (isinstance(identity, dict) and set(identity) == {"name", "fingerprint"}
            and all(isinstance(v, str) for v in identity.values())):  # fmt: skip
        raise check.fail("identity", "an object with string fields 'name' and 'fingerprint'", identity)
    metric = check.choice("metric", _METRICS)
    kind = check.choice("kind", _KINDS)
    center = check.boolean("center")
    dim, count, nprobe = check.integer("dim", 1), check.integer("count", 1), check.integer("nprobe", 1)
    ids = check.get("ids")
    if ids is not None and (not isinstance(ids, list) or len(ids) != count):
        raise check.fail("ids", f"null or a list of {count} ids (one per image, 'count')", ids)
    files = check.string_map("files")
    if not files:
        raise check.fail("files", "an object with at least one key", files)
    keys = _keys(check, files)
    paths = {key: contained_path(folder, name, function=function, field=f"field 'files.{key}'")
             for key, name in files.items()}  # fmt: skip
    for key, file in paths.items():
        if not file.is_file():
            raise FileNotFoundError(f"{function}: index folder {str(folder)!r} is damaged: FAISS file "
                                    f"{files[key]!r} of key {key!r} is missing")  # fmt: skip
    indexes = {key: _read_faiss(file, key, check, kind, dim, count) for key, file in paths.items()}
    means = _means(folder, check, files, dim, center)
    return {
        "identity": identity,
        "keys": keys,
        "indexes": indexes,
        "means": means,
        "metric": metric,
        "center": center,
        "kind": kind,
        "dim": dim,
        "count": count,
        "ids": ids,
        "nprobe": nprobe,
    }
