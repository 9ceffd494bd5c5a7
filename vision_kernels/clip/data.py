"""Image sources for dataset-scale CLIP runs, loaded by torch DataLoader workers.

Three kinds of source, all seen as one ordered list of images ``0 .. N-1`` (the order is
deterministic, so a run's shards and a resumed run see the same images at the same indices):

* a **folder tree**: ``ROOT/<class>/**/<image>`` (as torchvision's ``ImageFolder``): the sorted
  class sub-folder names are the classes (label = position in that list), images sorted by
  relative path. A folder without sub-folders is a plain unlabeled image folder.
* a **list file** (any other file, e.g. ``images.txt``): one image path per line, relative to the
  list's folder (absolute paths allowed); blank lines and lines starting with ``#`` are skipped; an
  optional class name follows a TAB (``cat/1.jpg<TAB>cat``), classes are the sorted names.
* **webdataset shards**: a ``.tar`` file, a brace pattern (``shards/data-{000000..000009}.tar``) or a
  folder holding only ``.tar`` files (sorted). Samples are grouped by key with webdataset's own
  naming rule (``key.ext``, the key is everything before the first dot of the file name); the
  image is the first member with an image extension, the label an optional ``.cls`` member (an
  integer). Members are indexed once (tar headers only) and read by offset, so any subset of
  samples can be loaded in any order by any worker. Needs the ``webdataset`` package
  (``pip install 'vision-kernels[data]'``); compressed tars are refused (no random access).

Loading (:func:`image_batches`): a ``torch.utils.data.DataLoader`` with workers applies the model's
own preprocessing (open_clip's ``preprocess``, or a transformers image processor, see
:func:`model_transform`) to the chosen indices, in order, in batches that never straddle two groups
(a run's shards). An image that cannot be read or preprocessed is skipped, never fatal: every
batch reports its failures as ``(index, reason)`` so that the caller can count and record them.
"""

from __future__ import annotations

import io
import os
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._optional import require

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "FolderSource",
    "ListSource",
    "TarSource",
    "ImageBatch",
    "ImageDataset",
    "open_image_source",
    "model_transform",
    "image_batches",
]

FUNCTION = "vision_kernels.clip.open_image_source"

# torchvision's ImageFolder extensions (compared case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

Transform = Callable[[Any], Tensor]


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _open_rgb(data: str | Path | io.BytesIO) -> Any:
    """Decode an image file (path or bytes) fully into an RGB PIL image (errors propagate)."""
    from PIL import Image

    with Image.open(data) as image:
        image.load()
        return image.convert("RGB")


class ImageSource(ABC):
    """An ordered list of images: ``keys[i]`` names image ``i`` (stable, one line of text), ``labels[i]``
    its class index or -1, ``classes`` the class names (empty when the source has none)."""

    kind: str
    location: str
    keys: list[str]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    @abstractmethod
    def load(self, index: int) -> Any:
        """Image ``index`` as an RGB PIL image; raises (OSError, ValueError, ...) when it is unreadable."""

    def describe(self) -> dict[str, Any]:
        """What a run's manifest records about the source (the ordered keys are stored by the run)."""
        return {"kind": self.kind, "location": self.location, "count": len(self), "classes": list(self.classes)}


def _check_nonempty(source: ImageSource, what: str) -> None:
    if len(source) == 0:
        raise ValueError(f"{FUNCTION}: argument 'source' {source.location!r} holds no images ({what})")


class FolderSource(ImageSource):
    """``ROOT/<class>/**/<image>`` (labels from the sorted class folders) or a flat ``ROOT/<image>`` folder."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.location = str(self.root.resolve())
        subfolders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        top_images = sorted(p.name for p in self.root.iterdir() if p.is_file() and _is_image_name(p.name))
        self.keys, self.labels, self.classes = [], [], []
        if not subfolders:
            self.keys = top_images
            self.labels = [-1] * len(top_images)
        else:
            if top_images:
                raise ValueError(
                    f"{FUNCTION}: argument 'source' {str(root)!r} mixes class sub-folders with "
                    f"{len(top_images)} images at its top level (e.g. {top_images[0]!r}); move them into a class "
                    "folder, or list the images in a text file"
                )
            for name in subfolders:
                found = sorted(
                    p.relative_to(self.root).as_posix()
                    for p in (self.root / name).rglob("*")
                    if p.is_file() and _is_image_name(p.name) and not any(s.startswith(".") for s in p.parts)
                )
                if not found:
                    continue  # like ImageFolder(allow_empty=True): an empty folder is no class
                label = len(self.classes)
                self.classes.append(name)
                self.keys += found
                self.labels += [label] * len(found)
        _check_nonempty(self, f"image files ending in {', '.join(IMAGE_EXTENSIONS)}")

    def load(self, index: int) -> Any:
        return _open_rgb(self.root / self.keys[index])


class ListSource(ImageSource):
    """A text file of image paths (relative to its folder), one per line, optional ``<TAB>class``."""

    kind = "list"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.location = str(self.path.resolve())
        self.base = self.path.parent
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{FUNCTION}: argument 'source' {str(path)!r} is not a UTF-8 text list of image paths ({error.reason})"
            ) from None
        entries: list[tuple[str, str | None]] = []
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, label = line.partition("\t")
            name, label = name.strip(), label.strip()
            if not name:
                raise ValueError(f"{FUNCTION}: {str(path)!r} line {number}: no image path before the TAB")
            entries.append((name, label or None))
        with_label = sum(label is not None for _, label in entries)
        if 0 < with_label < len(entries):
            raise ValueError(
                f"{FUNCTION}: {str(path)!r}: {with_label} of {len(entries)} lines give a class after a TAB; "
                "give one on every line or on none"
            )
        self.classes = sorted({label for _, label in entries if label is not None})
        position = {name: k for k, name in enumerate(self.classes)}
        self.keys = [name for name, _ in entries]
        self.labels = [position[label] if label is not None else -1 for _, label in entries]
        _check_nonempty(self, "no path lines")

    def load(self, index: int) -> Any:
        return _open_rgb(self.base / self.keys[index])


@dataclass(frozen=True)
class _Member:
    tar: int  # index into TarSource.tars
    offset: int  # byte offset of the member's data
    size: int


class TarSource(ImageSource):
    """webdataset-style ``.tar`` shards read by member offset (random access)."""

    kind = "tar"

    def __init__(self, tars: Sequence[str | os.PathLike[str]], location: str) -> None:
        tariterators = require("webdataset.tariterators", feature="vision_kernels.clip.data (webdataset .tar shards)")
        self.location = location
        self.tars = [Path(t) for t in tars]
        self.keys, self.labels, self.classes = [], [], []
        self._images: list[_Member] = []
        self._labels: list[_Member | None] = []
        for position, path in enumerate(self.tars):
            if not path.is_file():
                raise FileNotFoundError(f"{FUNCTION}: argument 'source': no such .tar shard {str(path)!r}")
            samples: dict[str, dict[str, _Member]] = {}
            try:
                with tarfile.open(path, mode="r:") as archive:
                    for member in archive:
                        if not member.isfile():
                            continue
                        key, extension = tariterators.base_plus_ext(member.name)
                        if key is None:
                            continue
                        entry = samples.setdefault(key, {})
                        entry.setdefault(extension.lower(), _Member(position, member.offset_data, member.size))
            except tarfile.ReadError as error:
                raise ValueError(
                    f"{FUNCTION}: argument 'source': {str(path)!r} is not an uncompressed .tar shard ({error}); "
                    "compressed shards have no random access, decompress them first"
                ) from None
            for key, members in samples.items():  # tar order, as webdataset streams them
                image = next((members[e] for e in members if _is_image_name("." + e)), None)
                if image is None:
                    continue  # a sample without an image (e.g. only metadata)
                self.keys.append(f"{path.name}/{key}")
                self._images.append(image)
                self._labels.append(members.get("cls"))
        self.labels = [-1] * len(self.keys)  # read with the image (see load_label)
        _check_nonempty(self, "no sample with an image member")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["shards"] = [str(p.resolve()) for p in self.tars]
        return info

    def _read(self, member: _Member) -> bytes:
        with open(self.tars[member.tar], "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
        if len(data) != member.size:
            raise OSError(f"{self.tars[member.tar].name}: member truncated ({len(data)} of {member.size} bytes)")
        return data

    def load(self, index: int) -> Any:
        return _open_rgb(io.BytesIO(self._read(self._images[index])))

    def load_label(self, index: int) -> int:
        """The sample's ``.cls`` integer, or -1 without one (raises ValueError for a non-integer)."""
        member = self._labels[index]
        if member is None:
            return -1
        text = self._read(member).decode("utf-8", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{self.keys[index]}.cls must hold an integer class, got {text[:20]!r}") from None


def open_image_source(source: str | os.PathLike[str]) -> ImageSource:
    """The image source at ``source``: a folder tree, a list file, a ``.tar`` shard, a brace pattern of
    shards or a folder of shards (see the module docstring).

    Raises:
        FileNotFoundError: nothing at ``source``.
        ValueError: a source without images, a damaged list or tar, mixed folder layouts.
        MissingDependencyError: ``.tar`` shards without the webdataset package.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"{FUNCTION}: argument 'source' must be a path, got {type(source).__name__}")
    text = os.fspath(source)
    path = Path(text)
    if "{" in text and not path.exists():
        shardlists = require("webdataset.shardlists", feature="vision_kernels.clip.data (webdataset .tar shards)")
        tars = list(shardlists.expand_urls(text))
        return TarSource(tars, text)
    if not path.exists():
        raise FileNotFoundError(f"{FUNCTION}: argument 'source': no such file or folder {text!r}")
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        tars = sorted(p for p in entries if p.is_file() and p.suffix.lower() == ".tar")
        if tars and not any(p.is_dir() or _is_image_name(p.name) for p in entries):
            return TarSource(tars, str(path.resolve()))
        return FolderSource(path)
    if path.suffix.lower() == ".tar":
        return TarSource([path], str(path.resolve()))
    if path.name.lower().endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")) or _is_image_name(path.name):
        raise ValueError(
            f"{FUNCTION}: argument 'source' must be a folder, a text list of paths or uncompressed .tar shards, "
            f"got {text!r}"
        )
    return ListSource(path)


class _ProcessorTransform:
    """A transformers image processor as a PIL -> ``[3, H, W]`` transform (picklable for workers)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def model_transform(model: Any) -> Transform:
    """The preprocessing of a model: a :class:`~vision_kernels.clip.LoadedClip` (open_clip's
    ``preprocess``; for ``hf:`` models the hub's image processor of the same id), a transformers image
    processor, or any callable PIL image -> ``[3, H, W]`` tensor (returned as is)."""
    from .models import LoadedClip

    if isinstance(model, LoadedClip):
        if model.preprocess is not None:
            return model.preprocess
        transformers = require("transformers", feature="vision_kernels.clip.model_transform")
        return _ProcessorTransform(transformers.AutoImageProcessor.from_pretrained(model.name[3:]))
    if hasattr(model, "preprocess") and hasattr(model, "model_input_names"):  # a transformers image processor
        return _ProcessorTransform(model)
    if callable(model):
        return model
    raise TypeError(
        "vision_kernels.clip.model_transform: argument 'model' must be a LoadedClip, a transformers image "
        f"processor or a callable transform, got {type(model).__name__}"
    )


@dataclass
class ImageBatch:
    """One batch: ``images`` ``[B, 3, H, W]`` of the readable images, their source ``indices`` ``[B]`` and
    ``labels`` ``[B]`` (-1 when unlabeled), ``group`` (which index group it belongs to) and the
    ``failed`` images of this batch as ``(index, reason)``."""

    images: Tensor
    indices: Tensor
    labels: Tensor
    group: int
    failed: list[tuple[int, str]] = field(default_factory=list)


class ImageDataset(Dataset[Any]):
    """Map-style dataset: item ``i`` is ``(i, label, tensor | None, reason)`` (``None`` when unreadable)."""

    def __init__(self, source: ImageSource, transform: Transform) -> None:
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[int, int, Tensor | None, str]:
        try:
            label = self.source.load_label(index) if isinstance(self.source, TarSource) else self.source.labels[index]
            image = self.transform(self.source.load(index))
            if not isinstance(image, Tensor) or image.dim() != 3:
                raise ValueError(f"the transform returned {type(image).__name__}, expected a [C, H, W] tensor")
            return index, label, image, ""
        except Exception as error:  # noqa: BLE001 - an unreadable image is skipped and reported, never fatal
            reason = " ".join(f"{type(error).__name__}: {error}".split())
            return index, -1, None, reason


class _GroupBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of at most ``batch_size`` consecutive indices of each group, groups in order."""

    def __init__(self, groups: Sequence[Sequence[int]], batch_size: int) -> None:
        self.batches = [list(g[s : s + batch_size]) for g in groups for s in range(0, len(g), batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _collate(items: list[tuple[int, int, Tensor | None, str]]) -> tuple[Tensor, Tensor, Tensor, list[tuple[int, str]]]:
    good = [(i, label, image) for i, label, image, _ in items if image is not None]
    failed = [(i, reason) for i, _, image, reason in items if image is None]
    if good:
        shapes = {tuple(image.shape) for _, _, image in good}
        if len(shapes) > 1:
            raise ValueError(f"the transform returned images of several shapes {sorted(shapes)}; it must resize")
        images = torch.stack([image for _, _, image in good])  # [B, 3, H, W]
    else:
        images = torch.empty(0)
    indices = torch.tensor([i for i, _, _ in good], dtype=torch.int64)
    labels = torch.tensor([label for _, label, _ in good], dtype=torch.int64)
    return images, indices, labels, failed


def image_batches(
    source: ImageSource,
    transform: Transform,
    groups: Sequence[Sequence[int]] | None = None,
    *,
    batch_size: int = 64,
    workers: int = 0,
) -> Iterator[ImageBatch]:
    """Preprocessed batches of ``source`` through a DataLoader with ``workers`` processes.

    ``groups`` are lists of source indices (e.g. the inputs of a run's shards; default: one group of
    every image); each group is cut into batches of ``batch_size`` consecutive entries, so a group's
    batches are the same whatever else is loaded. Batches come in order. A batch whose images all
    failed has ``images`` of size 0 and still reports them in ``failed``.
    """
    name = "vision_kernels.clip.image_batches"
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"{name}: argument 'batch_size' must be a positive integer, got {batch_size!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"{name}: argument 'workers' must be an integer >= 0, got {workers!r}")
    if groups is None:
        groups = [range(len(source))]
    for number, group in enumerate(groups):
        bad = [i for i in group if not 0 <= int(i) < len(source)]
        if bad:
            raise ValueError(
                f"{name}: argument 'groups' entry {number} holds index {bad[0]}, outside [0, {len(source)}) "
                f"(the source has {len(source)} images)"
            )
    sampler = _GroupBatches(groups, batch_size)
    owners = [k for k, g in enumerate(groups) for _ in range(0, len(g), batch_size)]
    loader = DataLoader(
        ImageDataset(source, transform),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    for owner, (images, indices, labels, failed) in zip(owners, loader, strict=True):
        yield ImageBatch(images, indices, labels, owner, failed)
