"""HeadIndex: FAISS databases of per-head contributions against brute-force search, IVF, groups, ids, persistence
with the model identity, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vision_kernels.clip as vc
from vision_kernels.clip.index import IVF_FROM


@pytest.fixture(scope="module")
def database(make_tiny_vit, make_images):
    model = make_tiny_vit(layers=3)
    images = make_images(24, seed=21)
    index = vc.HeadIndex.build(model, images, layers=[2], heads=[(1, 3)], groups={"shape": [(2, 0), (1, 1)]},
                               batch_size=10, ids=[f"image-{i}" for i in range(24)])  # fmt: skip
    heads = vc.decompose(model, images, layers=[1, 2], normalize=True).heads  # [K, 2, H, E]
    return model, images, index, heads


def brute_force(database_vectors: torch.Tensor, queries: torch.Tensor, k: int, center: bool = True):
    """Cosine similarity of centred vectors, the exact top k."""
    mean = database_vectors.mean(0) if center else 0
    keys = torch.nn.functional.normalize(database_vectors - mean, dim=1)
    scores = torch.nn.functional.normalize(queries - mean, dim=1) @ keys.T
    return scores.topk(k, dim=1)


def test_keys_and_layout(database) -> None:
    _, _, index, _ = database
    assert set(index.keys) == {"L2H0", "L2H1", "L2H2", "L2H3", "L1H3", "shape"}
    assert index.keys["shape"] == ((2, 0), (1, 1)) and index.keys["L1H3"] == ((1, 3),)
    assert index.kind == "flat" and len(index) == 24 and index.dim == 24
    assert "24 images" in repr(index)


@pytest.mark.parametrize(("key", "members"), [("L2H1", [(1, 1)]), ("L1H3", [(0, 3)]), ("shape", [(1, 0), (0, 1)])])
def test_search_images_equals_brute_force(database, make_images, key, members) -> None:
    model, images, index, heads = database
    vectors = sum(heads[:, position, head] for position, head in members)  # [K, E]
    queries = make_images(3, seed=22)
    query_heads = vc.decompose(model, queries, layers=[1, 2], normalize=True).heads
    query_vectors = sum(query_heads[:, position, head] for position, head in members)
    want = brute_force(vectors, query_vectors, 5)
    got = index.search_images(model, queries, key, k=5)
    torch.testing.assert_close(got.scores, want.values, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.indices, want.indices)
    assert got.ids[0] == [f"image-{i}" for i in want.indices[0].tolist()]


def test_blocked_torch_flat_search_equals_faiss_search(database) -> None:
    from vision_kernels.clip._index_build import flat_search as _flat_search

    _, _, index, _ = database
    faiss_index = index.indexes["L2H0"]
    queries = torch.nn.functional.normalize(torch.randn(5, 24), dim=1).numpy()
    want_scores, want_indices = faiss_index.search(queries, 7)
    for block_elements in (1 << 24, 5 * 8):  # one block, and blocks of 8 database vectors (three merges)
        scores, indices = _flat_search(faiss_index, queries, 7, block_elements)
        assert (indices == want_indices).all()
        torch.testing.assert_close(torch.from_numpy(scores), torch.from_numpy(want_scores), rtol=1e-5, atol=1e-6)


def test_search_database_images_finds_themselves(database) -> None:
    model, images, index, _ = database
    result = index.search_images(model, images[:4], "L2H2", k=1)
    assert result.indices[:, 0].tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(result.scores[:, 0], torch.ones(4), rtol=1e-5, atol=1e-5)


def test_search_directions_is_text_against_centred_contributions(database) -> None:
    _, _, index, heads = database
    texts = torch.randn(2, 24)
    mean = heads[:, 1, 3].mean(0)
    keys = torch.nn.functional.normalize(heads[:, 1, 3] - mean, dim=1)
    want = (torch.nn.functional.normalize(texts, dim=1) @ keys.T).topk(3, dim=1)
    got = index.search_directions("L2H3", texts, k=3)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.scores, want.values, rtol=1e-4, atol=1e-5)
    assert index.search_directions("L2H3", texts[0], k=30).indices.shape == (1, 24)  # k clipped to the database


def test_inner_product_metric_without_centering(make_tiny_vit, make_images) -> None:
    model = make_tiny_vit(layers=3)
    images = make_images(10, seed=23)
    index = vc.HeadIndex.build(model, images, heads=[(2, 1)], metric="ip", center=False)
    vectors = vc.decompose(model, images, layers=[2], normalize=True).heads[:, 0, 1]
    query = torch.randn(1, 24)
    want = (query @ vectors.T).topk(4, dim=1)
    got = index.search_directions("L2H1", query, k=4)
    assert torch.equal(got.indices, want.indices) and index.means["L2H1"] is None


def test_ivf_index_from_contributions_and_auto_kind() -> None:
    generator = torch.Generator().manual_seed(24)
    centres = torch.randn(8, 16, generator=generator) * 4
    vectors = centres[torch.randint(0, 8, (4000,), generator=generator)] + torch.randn(4000, 16, generator=generator)
    identity = vc.ModelIdentity("synthetic", "0" * 64)
    ivf = vc.HeadIndex.from_contributions({"L0H0": vectors}, identity, kind="ivf", nlist=16, nprobe=16, chunk=1000)
    flat = vc.HeadIndex.from_contributions({"L0H0": vectors}, identity, kind="flat")
    assert ivf.kind == "ivf" and ivf.indexes["L0H0"].nlist == 16 and ivf.keys["L0H0"] == ((0, 0),)
    queries = vectors[:50] + 0.1 * torch.randn(50, 16, generator=generator)
    exact = flat.search_contributions("L0H0", queries, k=5)
    approximate = ivf.search_contributions("L0H0", queries, k=5)  # every cell probed: exact too
    assert torch.equal(exact.indices, approximate.indices)
    ivf.nprobe = 1
    ivf._apply_nprobe()
    recall = (ivf.search_contributions("L0H0", queries, k=1).indices == exact.indices[:, :1]).float().mean()
    assert recall > 0.5
    auto = vc.HeadIndex.from_contributions({"x": vectors[:100]}, identity)
    assert auto.kind == "flat" and IVF_FROM > 100 and auto.keys["x"] == ()


def test_save_load_round_trip_and_model_identity(database, tmp_path, make_tiny_vit) -> None:
    model, images, index, _ = database
    folder = index.save(tmp_path / "db")
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["identity"]["fingerprint"] == vc.model_identity(model).fingerprint and meta["count"] == 24
    loaded = vc.HeadIndex.load(folder, model)
    for key in index.keys:
        a, b = index.search_images(model, images[:3], key, k=4), loaded.search_images(model, images[:3], key, k=4)
        assert torch.equal(a.indices, b.indices) and a.ids == b.ids
    other = make_tiny_vit(layers=3)
    with torch.no_grad():
        other.proj.add_(1e-3)  # the same architecture, other weights
    with pytest.raises(ValueError, match=r"HeadIndex.load: argument 'model' is not the model this index was built"):
        vc.HeadIndex.load(folder, other)
    with pytest.raises(ValueError, match=r"search_images|contributions: argument 'model' is not the model"):
        loaded.search_images(other, images[:1], "L2H0")
    with pytest.raises(FileNotFoundError, match=r"must be a folder written by HeadIndex.save"):
        vc.HeadIndex.load(tmp_path / "missing", model)
    meta["version"] = 99
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"holds format 'vision_kernels.HeadIndex' version 99"):
        vc.HeadIndex.load(folder, model)


def test_group_names_that_are_savez_keywords_round_trip(make_tiny_vit, make_images, tmp_path) -> None:
    model, images = make_tiny_vit(layers=2), make_images(6, seed=3)
    groups = {"file": [(1, 0)], "allow_pickle": [(1, 1), (0, 2)]}
    index = vc.HeadIndex.build(model, images, layers=[], groups=groups)
    loaded = vc.HeadIndex.load(index.save(tmp_path / "db"), model)
    assert set(loaded.means) == set(index.means) == set(groups)
    for key, mean in index.means.items():
        assert mean is not None and np.array_equal(loaded.means[key], mean)


def test_fingerprint_is_stable_and_device_agnostic(make_tiny_vit) -> None:
    first, second = make_tiny_vit(layers=2), make_tiny_vit(layers=2)
    assert vc.model_identity(first) == vc.model_identity(second)
    assert vc.model_identity(first, "name").name == "name"
    with torch.no_grad():
        second.transformer.resblocks[1].mlp.c_fc.weight[0, 0] += 1.0  # the first sampled element of a parameter
    assert vc.model_identity(first).fingerprint != vc.model_identity(second).fingerprint


def test_gpu_request_without_a_gpu_stays_on_cpu(make_tiny_vit, make_images) -> None:
    model = make_tiny_vit(layers=2)
    index = vc.HeadIndex.build(model, make_images(4), heads=[(1, 0)], device="cuda")
    assert type(index.indexes["L1H0"]).__name__ == "IndexFlatIP"


def test_bad_input(database, make_images) -> None:
    model, images, index, _ = database
    build = vc.HeadIndex.build
    with pytest.raises(ValueError, match=r"HeadIndex.build: argument 'metric' must be one of"):
        build(model, images, heads=[(1, 0)], metric="l1")
    with pytest.raises(ValueError, match=r"argument 'kind' must be one of \('auto', 'flat', 'ivf'\)"):
        build(model, images, heads=[(1, 0)], kind="hnsw")
    with pytest.raises(ValueError, match=r"give the heads to index: 'heads', 'layers' or 'groups'"):
        build(model, images)
    with pytest.raises(IndexError, match=r"head \(1, 4\) is out of range for a model with 3 layers of 4 heads"):
        build(model, images, heads=[(1, 4)])
    with pytest.raises(IndexError, match=r"head \(3, 0\) is out of range"):
        build(model, images, groups={"g": [(3, 0)]})
    with pytest.raises(ValueError, match=r"argument 'groups' has name 'L1H0', which is the key of a single head"):
        build(model, images, heads=[(1, 0)], groups={"L1H0": [(2, 0)]})
    with pytest.raises(ValueError, match=r"argument 'ids' must hold one id per image \(24\), got 2"):
        build(model, images, heads=[(1, 0)], ids=["a", "b"])
    with pytest.raises(ValueError, match=r"argument 'images' holds no image"):
        build(model, [], heads=[(1, 0)])
    with pytest.raises(KeyError, match=r"argument 'key' must be one of the index's keys"):
        index.search_directions("L0H0", torch.randn(24))
    with pytest.raises(ValueError, match=r"argument 'directions' must be \[E\] or \[Q, E\] with E = 24"):
        index.search_directions("L2H0", torch.randn(3, 23))
    with pytest.raises(ValueError, match=r"argument 'k' must be >= 1"):
        index.search_directions("L2H0", torch.randn(24), k=0)
    with pytest.raises(ValueError, match=r"argument 'images' must be 32 x 32 pixels"):
        index.search_images(model, make_images(1, size=16), "L2H0")
