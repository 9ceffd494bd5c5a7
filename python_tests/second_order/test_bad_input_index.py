"""HeadIndex against bad input (issue 16): damaged index folders, traversal attempts, NaN/Inf, SIGKILL during
save, missing faiss, and figures that leave the user's matplotlib backend alone."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import vision_kernels.clip as vc
from vision_kernels._files import is_temporary_name
from vision_kernels._optional import MissingDependencyError

COUNT, DIM = 20, 24


@pytest.fixture(scope="module")
def model(make_tiny_vit):
    return make_tiny_vit(layers=3)


@pytest.fixture(scope="module")
def index(model):
    generator = torch.Generator().manual_seed(3)
    contributions = {"L2H0": torch.randn(COUNT, DIM, generator=generator),
                     "shape": torch.randn(COUNT, DIM, generator=generator)}  # fmt: skip
    return vc.HeadIndex.from_contributions(
        contributions, vc.model_identity(model), keys={"shape": [(2, 1), (1, 0)]}, ids=[f"i{i}" for i in range(COUNT)]
    )


@pytest.fixture
def saved(index, tmp_path) -> Path:
    return index.save(tmp_path / "db")


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _fails(folder: Path, model, error: type, pattern: str) -> None:
    """Loading fails with exactly ``error`` (not a subclass such as KeyError), naming the folder and ``pattern``."""
    with pytest.raises(Exception) as caught:
        vc.HeadIndex.load(folder, model)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    assert "HeadIndex.load" in message and str(folder) in message, message
    assert re.search(pattern, message), message


def test_round_trip_still_works(saved, index, model) -> None:
    loaded = vc.HeadIndex.load(saved, model)
    query = torch.randn(2, DIM, generator=torch.Generator().manual_seed(1))
    for key in index.keys:
        a, b = index.search_contributions(key, query, k=5), loaded.search_contributions(key, query, k=5)
        assert torch.equal(a.indices, b.indices) and a.ids == b.ids
    assert loaded.keys == index.keys


MISSING_FIELDS = ["identity", "keys", "files", "means", "metric", "center", "kind", "dim", "count", "nprobe", "ids"]


@pytest.mark.parametrize("field", MISSING_FIELDS)
def test_missing_meta_field(saved, model, field) -> None:
    _edit_meta(saved, lambda meta: meta.pop(field))
    _fails(saved, model, ValueError, rf"has no field '{field}'")


WRONG_VALUES = [
    ("identity", "x", r"field 'identity'"),
    ("identity", {"name": "a"}, r"field 'identity'"),
    ("keys", {"L2H0": [[2, 0]]}, r"field 'keys' must be an object with the keys of 'files'"),
    ("keys", {"L2H0": [[2, "a"]], "shape": [[2, 1]]}, r"field 'keys.L2H0'"),
    ("keys", {"L2H0": [2, 0], "shape": [[2, 1]]}, r"field 'keys.L2H0'"),
    ("files", ["index_0000.faiss"], r"field 'files' must be an object of strings"),
    ("files", {}, r"field 'files' must be an object with at least one key"),
    ("means", {"L2H0": 3}, r"field 'means'"),
    ("means", {"other": "mean_0000"}, r"field 'means'"),
    ("metric", "l2", r"field 'metric' must be one of \('cosine', 'ip'\)"),
    ("center", "yes", r"field 'center' must be true or false"),
    ("kind", "hnsw", r"field 'kind' must be one of \('flat', 'ivf'\)"),
    ("kind", "ivf", r"is a IndexFlatIP, expected IndexIVFFlat"),
    ("dim", 0, r"field 'dim' must be an integer >= 1"),
    ("dim", 25, r"cannot hold 20 vectors of dimension 25"),
    ("dim", 23, r"has dimension 24, 'dim' says 23"),
    ("dim", 2.5, r"field 'dim' must be an integer"),
    ("count", 1_000_000, r"cannot hold 1000000 vectors"),
    ("count", 19, r"holds 20 vectors, 'count' says 19"),
    ("count", True, r"field 'count' must be an integer"),
    ("nprobe", -1, r"field 'nprobe' must be an integer >= 1"),
    ("ids", ["a"], r"field 'ids' must be null or a list of 20 ids"),
    ("ids", "abc", r"field 'ids'"),
]


@pytest.mark.parametrize(("field", "value", "pattern"), WRONG_VALUES)
def test_wrong_meta_value(saved, model, field, value, pattern) -> None:
    def change(meta: dict) -> None:
        meta[field] = value
        if field == "count":
            meta["ids"] = None  # else the ids' count disagrees first

    _edit_meta(saved, change)
    _fails(saved, model, ValueError, pattern)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_meta_not_json_or_not_an_object(saved, model, content) -> None:
    (saved / "meta.json").write_bytes(content.encode("latin-1"))
    _fails(saved, model, ValueError, r"meta.json (is not valid JSON|must hold a JSON object)")


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/passwd", "sub/../../db2/x.faiss"])
def test_traversal_in_files_is_refused(saved, model, name) -> None:
    _edit_meta(saved, lambda meta: meta["files"].__setitem__("L2H0", name))
    _fails(saved, model, ValueError, r"points outside the folder; refusing to open it")


def test_symlink_leading_out_is_refused(saved, model, tmp_path) -> None:
    outside = tmp_path / "outside.faiss"
    (saved / "index_0000.faiss").rename(outside)
    (saved / "index_0000.faiss").symlink_to(outside)
    _fails(saved, model, ValueError, r"points outside the folder")


def test_missing_files(saved, model) -> None:
    (saved / "index_0001.faiss").unlink()
    _fails(saved, model, FileNotFoundError, r"FAISS file 'index_0001.faiss' of key 'shape' is missing")


def test_missing_means_file(saved, model) -> None:
    (saved / "means.npz").unlink()
    _fails(saved, model, FileNotFoundError, r"means.npz is missing")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_damaged_faiss_file(saved, model, damage) -> None:
    path = saved / "index_0000.faiss"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 64]
    elif damage == "garbage":
        data = bytearray(b"\x17" * len(data))
    else:
        data[:4] = b"XXXX"  # an unknown index type
    path.write_bytes(bytes(data))
    _fails(saved, model, ValueError, r"(FAISS cannot read 'index_0000.faiss'|'index_0000.faiss' of key 'L2H0' has)")


@pytest.mark.parametrize("damage", ["garbage", "shape", "dtype", "nan", "name"])
def test_damaged_means(saved, model, damage) -> None:
    path = saved / "means.npz"
    if damage == "garbage":
        path.write_bytes(b"not a zip file at all")
        _fails(saved, model, ValueError, r"means.npz cannot be read")
        return
    if damage == "name":
        _edit_meta(saved, lambda meta: meta["means"].__setitem__("L2H0", "mean_9999"))
        _fails(saved, model, ValueError, r"field 'means.L2H0'")
        return
    arrays = dict(np.load(path))
    first = arrays["mean_0000"]
    arrays["mean_0000"] = {"shape": first[:-1], "dtype": first.astype(np.float64), "nan": first * np.nan}[damage]
    np.savez(path, **arrays)
    _fails(saved, model, ValueError, r"mean 'mean_0000' of key 'L2H0' in means.npz must be finite float32 \[24\]")


def test_pickled_means_are_not_loaded(saved, model) -> None:
    arrays = dict(np.load(saved / "means.npz"))
    arrays["mean_0000"] = np.array([{"a": 1}], dtype=object)
    np.savez(saved / "means.npz", **arrays)
    _fails(saved, model, ValueError, r"means.npz cannot be read|mean 'mean_0000'")


def test_load_of_a_file_or_missing_folder(tmp_path, model) -> None:
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "file", tmp_path / "missing", tmp_path):
        with pytest.raises(FileNotFoundError, match=r"HeadIndex.load: argument 'path' must be a folder written by"):
            vc.HeadIndex.load(path, model)


def test_save_refuses_a_foreign_non_empty_folder(index, tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"HeadIndex.save: argument 'path' .* holds no index"):
        index.save(tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"x"


def test_save_over_an_index_replaces_it_whole(saved, index, model) -> None:
    (saved / "index_0005.faiss").write_bytes(b"stale file of an older index")
    index.save(saved)
    assert sorted(p.name for p in saved.iterdir()) == ["index_0000.faiss", "index_0001.faiss", "means.npz",
                                                        "meta.json"]  # fmt: skip
    vc.HeadIndex.load(saved, model)


_KILLED_SAVE = textwrap.dedent(
    """
    import sys, time, torch, faiss
    import vision_kernels.clip as vc
    from vision_kernels.clip.index import ModelIdentity
    identity = ModelIdentity(sys.argv[2], sys.argv[3])
    index = vc.HeadIndex.from_contributions({"L2H0": torch.randn(50, 24), "shape": torch.randn(50, 24)}, identity)
    write = faiss.write_index
    def slow_write(*args):
        write(*args)
        print("writing", flush=True)
        time.sleep(60)
    faiss.write_index = slow_write
    index.save(sys.argv[1])
    """
)


def test_sigkill_during_save_leaves_the_old_index_loadable(saved, index, model) -> None:
    identity = index.identity
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVE, str(saved), identity.name, identity.fingerprint],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "writing"  # killed after the new index's first FAISS file
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    loaded = vc.HeadIndex.load(saved, model)
    assert loaded.count == COUNT  # the old index (the killed save had 50 images)
    leftovers = [p for p in saved.parent.iterdir() if is_temporary_name(p.name)]
    assert len(leftovers) == 1
    index.save(saved)  # the next save cleans the killed writer's temporary folder
    assert not [p for p in saved.parent.iterdir() if is_temporary_name(p.name)]


def test_nan_and_inf_are_rejected(index, model, make_images) -> None:
    identity = vc.model_identity(model)
    bad = torch.randn(COUNT, DIM)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"from_contributions: argument 'contributions\['L2H0'\]' must be finite, "
                                         r"got 1 NaN/Inf values"):  # fmt: skip
        vc.HeadIndex.from_contributions({"L2H0": bad}, identity)
    images = make_images(4)
    images[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"HeadIndex.build: argument 'images' must be finite"):
        vc.HeadIndex.build(model, images, heads=[(2, 0)])
    with pytest.raises(ValueError, match=r"contributions: argument 'images' must be finite"):
        index.search_images(model, images, "L2H0")
    query = torch.randn(2, DIM)
    query[0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"search_contributions: argument 'contributions' must be finite"):
        index.search_contributions("L2H0", query)
    with pytest.raises(ValueError, match=r"search_directions: argument 'directions' must be finite"):
        index.search_directions("L2H0", query)


def test_missing_faiss_names_the_extra(saved, model, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"HeadIndex.load needs faiss-cpu.*pip install 'vision-kernels"):
        vc.HeadIndex.load(saved, model)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"overlay_figure needs matplotlib.*vision-kernels\[figures\]"):
        vc.overlay_figure(torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), tmp_path / "f.png")


def test_overlay_figure_keeps_the_users_backend(tmp_path) -> None:
    script = textwrap.dedent(
        """
        import sys, matplotlib, torch
        matplotlib.use("svg")
        import vision_kernels.clip as vc
        vc.overlay_figure(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8), sys.argv[1])
        import matplotlib.pyplot as plt
        print(matplotlib.get_backend(), len(plt.get_fignums()))
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "f.png")], capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    assert out.stdout.split() == ["svg", "0"]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("metric", "center", "kind"), [("cosine", True, "flat"), ("ip", False, "flat"),
                                                        ("cosine", True, "ivf")])  # fmt: skip
def test_nan_after_the_sample_is_rejected_and_huge_values_are_not(model, metric, center, kind) -> None:
    # the flat build checks block by block while it prepares: a NaN far from the mean's sample, and a norm that
    # overflows float32 without any NaN/Inf value, must both be told apart from the whole-tensor check
    identity = vc.model_identity(model)
    options = dict(metric=metric, center=center, kind=kind, sample_size=40, chunk=300, progress=False)
    bad = torch.randn(600, DIM)
    bad[555, 7] = float("inf")
    with pytest.raises(ValueError, match=r"argument 'contributions\['L2H0'\]' must be finite, got 1 NaN/Inf values"):
        vc.HeadIndex.from_contributions({"L2H0": bad}, identity, **options)
    huge = torch.randn(600, DIM)
    huge[555] = 3e38  # finite, |v|^2 overflows
    index = vc.HeadIndex.from_contributions({"L2H0": huge}, identity, **options)
    assert index.count == 600
