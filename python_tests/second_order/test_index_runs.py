"""build_index_run: per-shard FAISS parts merged with FAISS's merge_from (flat and IVF) equal one index built in
memory; an interrupted build resumes from its parts; unreadable images are not indexed."""

from __future__ import annotations

import pytest
import torch

import vision_kernels.clip as vc
from vision_kernels.clip.index_runs import build_index_run

COUNT = 23


class Interrupted(Exception):
    pass


def _loader(images: torch.Tensor, unreadable: tuple[int, ...] = (), fail_at: int | None = None):
    def load(positions):
        if fail_at is not None and fail_at in positions:
            raise Interrupted
        good = [p for p in positions if p not in unreadable]
        for start in range(0, len(good), 4):
            chunk = torch.tensor(good[start : start + 4], dtype=torch.int64)
            yield images[chunk], chunk

    return load


@pytest.fixture(scope="module")
def setting(make_tiny_vit, make_images):
    return make_tiny_vit(layers=3), make_images(COUNT, seed=11)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_merged_parts_equal_an_index_built_in_memory(setting, tmp_path, kind) -> None:
    model, images = setting
    inputs = [f"img-{i}.png" for i in range(COUNT)]
    unreadable = (4, 17)
    db = tmp_path / "db"
    with pytest.raises(Interrupted):  # killed while the third shard is computed
        build_index_run(model, inputs, _loader(images, unreadable, fail_at=12), db, heads=[(2, 1)],
                        groups={"g": [(1, 0), (2, 3)]}, kind=kind, shard_size=5, sample_size=8)  # fmt: skip
    parts = tmp_path / "db.parts"
    assert len(list(parts.glob("shard-*.json"))) == 2 and not db.exists()
    index = build_index_run(model, inputs, _loader(images, unreadable), db, heads=[(2, 1)],
                            groups={"g": [(1, 0), (2, 3)]}, kind=kind, shard_size=5, sample_size=8)  # fmt: skip
    assert index is not None and index.kind == kind and not parts.exists()
    kept = [i for i in range(COUNT) if i not in unreadable]
    assert index.ids == [inputs[i] for i in kept] and index.count == len(kept)
    contributions = index.contributions(model, images[kept])
    for key in ("L2H1", "g"):
        first = [j for j, i in enumerate(kept) if i < 8]  # the mean is the sample's: the first 8 inputs
        torch.testing.assert_close(torch.from_numpy(index.means[key]), contributions[key][first].mean(0),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
        centred = torch.nn.functional.normalize(contributions[key] - contributions[key][first].mean(0), dim=1)
        want = (centred[:3] @ centred.T).topk(5, dim=1)
        got = index.search_contributions(key, contributions[key][:3], k=5)
        assert torch.equal(got.indices, want.indices)
        torch.testing.assert_close(got.scores, want.values, rtol=1e-5, atol=1e-5)
    loaded = vc.HeadIndex.load(db, model)
    assert loaded.ids == index.ids and loaded.kind == kind


def test_bad_arguments(setting, tmp_path) -> None:
    model, images = setting
    with pytest.raises(ValueError, match=r"build_index_run: argument 'inputs' must hold at least one image"):
        build_index_run(model, [], _loader(images), tmp_path / "db", heads=[(2, 1)])
    with pytest.raises(ValueError, match=r"argument 'shard_size' must be an integer >= 1"):
        build_index_run(model, ["a"], _loader(images), tmp_path / "db", heads=[(2, 1)], shard_size=0)
    with pytest.raises(IndexError, match=r"head \(5, 0\) is out of range"):
        build_index_run(model, ["a"], _loader(images), tmp_path / "db", heads=[(5, 0)])
    with pytest.raises(ValueError, match=r"none of the first 3 images could be read"):
        build_index_run(model, ["a", "b", "c"], _loader(images, unreadable=(0, 1, 2)), tmp_path / "db",
                        heads=[(2, 1)])  # fmt: skip
    nan_images = images.clone()
    nan_images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"argument 'images' must be finite"):
        build_index_run(model, ["a", "b"], _loader(nan_images), tmp_path / "db", heads=[(2, 1)])
