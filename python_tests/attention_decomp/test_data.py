"""vision_kernels.clip.data: folder / list / webdataset sources, DataLoader batches, unreadable images."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from vision_kernels.clip.data import (
    FolderSource,
    ListSource,
    TarSource,
    image_batches,
    model_transform,
    open_image_source,
)


def _all(synth, source, workers: int = 0, batch_size: int = 5, groups=None):
    batches = list(image_batches(source, synth.SmallTransform(), groups, batch_size=batch_size, workers=workers))
    images = torch.cat([b.images for b in batches if b.images.numel()])
    indices = torch.cat([b.indices for b in batches])
    labels = torch.cat([b.labels for b in batches])
    failed = [f for b in batches for f in b.failed]
    return batches, images, indices, labels, failed


def test_folder_tree_is_sorted_and_labeled(tmp_path: Path, synth) -> None:
    root = synth.class_folder(tmp_path / ".hidden_parent" / "images", classes=3, per_class=2)
    (root / "class_1" / "nested").mkdir()
    synth.image(7).save(root / "class_1" / "nested" / "deep.JPG", format="JPEG")
    (root / "class_0" / "notes.txt").write_text("not an image")
    (root / "class_0" / ".hidden.png").write_bytes(synth.png_bytes(synth.image(1)))
    (root / "empty").mkdir()
    source = open_image_source(root)
    assert isinstance(source, FolderSource)
    assert source.classes == ["class_0", "class_1", "class_2"]  # the empty folder is no class
    assert source.keys == [
        "class_0/img_000.png",
        "class_0/img_001.png",
        "class_1/img_000.png",
        "class_1/img_001.png",
        "class_1/nested/deep.JPG",
        "class_2/img_000.png",
        "class_2/img_001.png",
    ]
    assert source.labels == [0, 0, 1, 1, 1, 2, 2]
    assert source.describe()["count"] == 7


def test_flat_folder_has_no_labels_and_mixed_layout_is_refused(tmp_path: Path, synth) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in (2, 0, 1):
        synth.image(k).save(flat / f"{k}.png")
    source = open_image_source(flat)
    assert source.keys == ["0.png", "1.png", "2.png"] and source.labels == [-1, -1, -1] and source.classes == []
    (flat / "sub").mkdir()
    synth.image(3).save(flat / "sub" / "3.png")
    with pytest.raises(ValueError, match=r"open_image_source: argument 'source' .* mixes class sub-folders"):
        open_image_source(flat)


def test_list_file_paths_relative_to_the_list_with_labels(tmp_path: Path, synth) -> None:
    root = synth.class_folder(tmp_path / "data" / "images", classes=2, per_class=2)
    listing = tmp_path / "data" / "list.txt"
    absolute = (root / "class_0" / "img_001.png").resolve()
    listing.write_text(
        f"# images to run\nimages/class_1/img_000.png\tdog\n\n{absolute}\tcat\nimages/missing.png\tcat\n"
    )
    source = open_image_source(listing)
    assert isinstance(source, ListSource)
    assert source.keys == ["images/class_1/img_000.png", str(absolute), "images/missing.png"]
    assert source.classes == ["cat", "dog"] and source.labels == [1, 0, 0]
    _, images, indices, labels, failed = _all(synth, source)
    assert indices.tolist() == [0, 1] and labels.tolist() == [1, 0] and images.shape == (2, 3, 16, 16)
    assert [i for i, _ in failed] == [2] and "missing.png" in failed[0][1]
    listing.write_text("images/class_1/img_000.png\tdog\nimages/class_0/img_000.png\n")
    with pytest.raises(ValueError, match="1 of 2 lines give a class"):
        open_image_source(listing)


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path: Path, synth) -> None:
    root = synth.class_folder(tmp_path / "images", classes=2, per_class=6)
    (root / "class_0" / "img_002.png").write_bytes(b"not a png at all")
    data = synth.png_bytes(synth.image(5))
    (root / "class_1" / "img_004.png").write_bytes(data[: len(data) // 2])  # truncated
    source = open_image_source(root)
    for workers in (0, 2):
        batches, images, indices, labels, failed = _all(synth, source, workers=workers)
        assert [i for i, _ in failed] == [2, 10]
        assert all(reason for _, reason in failed)
        assert indices.tolist() == [i for i in range(12) if i not in (2, 10)]
        assert labels.tolist() == [source.labels[i] for i in indices.tolist()]
        assert images.shape == (10, 3, 16, 16)
    # a batch of only unreadable images is still reported, with no images
    (batch,) = image_batches(source, synth.SmallTransform(), [[2]], batch_size=4)
    assert batch.images.numel() == 0 and batch.indices.tolist() == [] and [i for i, _ in batch.failed] == [2]


def test_workers_give_the_same_batches_and_groups_are_never_straddled(tmp_path: Path, synth) -> None:
    source = open_image_source(synth.class_folder(tmp_path / "images", classes=3, per_class=5))
    groups = [[0, 1, 2, 3, 4, 5, 6], [9, 8, 14]]
    one, images_0, indices_0, _, _ = _all(synth, source, workers=0, batch_size=3, groups=groups)
    two, images_2, indices_2, _, _ = _all(synth, source, workers=2, batch_size=3, groups=groups)
    assert [b.indices.tolist() for b in one] == [[0, 1, 2], [3, 4, 5], [6], [9, 8, 14]]
    assert [b.group for b in one] == [0, 0, 0, 1]
    assert torch.equal(images_0, images_2) and torch.equal(indices_0, indices_2)
    # the image of index i is the same whichever group or batch it is loaded in
    (alone,) = image_batches(source, synth.SmallTransform(), [[8]], batch_size=3)
    assert torch.equal(alone.images[0], images_0[indices_0.tolist().index(8)])
    with pytest.raises(ValueError, match=r"image_batches: argument 'groups' entry 1 holds index 15, outside \[0, 15\)"):
        list(image_batches(source, synth.SmallTransform(), [[0], [15]]))
    with pytest.raises(ValueError, match="argument 'batch_size' must be a positive integer, got 0"):
        list(image_batches(source, synth.SmallTransform(), batch_size=0))


def _write_shards(synth, folder: Path, per_shard: int = 4, shards: int = 2) -> list[Path]:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"data-{s:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for j in range(per_shard):
                n = s * per_shard + j
                writer.write({"__key__": f"sample{n:04d}", "png": synth.png_bytes(synth.image(n)), "cls": n % 3})
        paths.append(path)
    return paths


def test_webdataset_shards_by_file_pattern_and_folder(tmp_path: Path, synth) -> None:
    pytest.importorskip("webdataset")
    _write_shards(synth, tmp_path / "shards")
    by_folder = open_image_source(tmp_path / "shards")
    by_pattern = open_image_source(str(tmp_path / "shards" / "data-{000000..000001}.tar"))
    single = open_image_source(tmp_path / "shards" / "data-000001.tar")
    assert isinstance(by_folder, TarSource) and isinstance(by_pattern, TarSource)
    assert by_folder.keys == by_pattern.keys == [f"data-00000{n // 4}.tar/sample{n:04d}" for n in range(8)]
    assert single.keys == by_folder.keys[4:]
    for workers in (0, 2):
        _, images, indices, labels, failed = _all(synth, by_folder, workers=workers)
        assert failed == [] and indices.tolist() == list(range(8)) and labels.tolist() == [n % 3 for n in range(8)]
        expected = torch.stack([synth.SmallTransform()(synth.image(n)) for n in range(8)])
        assert torch.equal(images, expected)


def test_webdataset_sample_with_bad_image_or_label_is_skipped(tmp_path: Path, synth) -> None:
    pytest.importorskip("webdataset")
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as archive:
        for name, data in [
            ("a.png", synth.png_bytes(synth.image(0))),
            ("b.jpg", b"garbage"),
            ("c.png", synth.png_bytes(synth.image(2))),
            ("c.cls", b"two"),
            ("d.json", b"{}"),  # no image: not a sample
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    source = open_image_source(path)
    assert source.keys == ["bad.tar/a", "bad.tar/b", "bad.tar/c"]
    _, _, indices, _, failed = _all(synth, source)
    assert indices.tolist() == [0] and [i for i, _ in failed] == [1, 2] and "must hold an integer" in failed[1][1]


def test_source_errors_name_the_argument(tmp_path: Path, synth) -> None:
    with pytest.raises(FileNotFoundError, match="open_image_source: argument 'source': no such file or folder"):
        open_image_source(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        open_image_source(tmp_path / "empty")
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="uncompressed .tar shards"):
        open_image_source(tmp_path / "x.tar.gz")
    (tmp_path / "fake.tar").write_bytes(b"\x1f\x8b" + b"0" * 600)
    with pytest.raises(ValueError, match="is not an uncompressed .tar shard"):
        open_image_source(tmp_path / "fake.tar")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no images"):
        open_image_source(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="is not a UTF-8 text list"):
        open_image_source(tmp_path / "binary.txt")
    with pytest.raises(TypeError, match="argument 'source' must be a path, got int"):
        open_image_source(3)  # type: ignore[arg-type]


def test_model_transform_open_clip_and_transformers(tmp_path: Path, synth) -> None:
    open_clip = pytest.importorskip("open_clip")
    transformers = pytest.importorskip("transformers")
    from vision_kernels.clip.models import LoadedClip

    preprocess = open_clip.image_transform(32, is_train=False)
    loaded = LoadedClip(torch.nn.Identity(), preprocess, None, "test", None)
    assert model_transform(loaded) is preprocess
    source = open_image_source(synth.class_folder(tmp_path / "images", classes=1, per_class=3))
    (batch,) = image_batches(source, model_transform(loaded), batch_size=8, workers=2)
    assert batch.images.shape == (3, 3, 32, 32)
    assert torch.equal(batch.images[1], preprocess(source.load(1)))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    transform = model_transform(processor)
    (batch,) = image_batches(source, transform, batch_size=8, workers=2)
    assert batch.images.shape == (3, 3, 24, 24)
    want = processor(images=source.load(2), return_tensors="pt")["pixel_values"][0]
    assert torch.equal(batch.images[2], want)
    with pytest.raises(TypeError, match="model_transform: argument 'model' must be"):
        model_transform(42)
