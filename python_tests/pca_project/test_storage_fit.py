"""Weight matrices on disk, column statistics, the streaming and exact PCA fits, saved spaces."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from vision_kernels.weightspace import (
    ConcatRows,
    FileRows,
    LoraDataset,
    MatrixWriter,
    TensorRows,
    WeightSpace,
    column_statistics,
    fit_exact,
    fit_streaming,
    principal_angles,
)

# ---------------------------------------------------------------- storage


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_matrix_writer_and_reader(tmp_path, suffix, dtype) -> None:
    if suffix == ".npy" and dtype == torch.bfloat16:
        with pytest.raises(TypeError, match=r"cannot store torch.bfloat16 in .npy"):
            MatrixWriter(tmp_path / f"m{suffix}", 3, 5, dtype)
        return
    matrix = torch.randn(23, 17).to(dtype)
    path = tmp_path / f"m{suffix}"
    with MatrixWriter(path, 23, 17, dtype, {"note": "hello"}) as writer:
        for start in range(0, 23, 5):
            writer.append(matrix[start : start + 5])
    rows = FileRows(path)
    assert rows.shape == (23, 17) and rows.dtype == dtype and rows.metadata == {"note": "hello"}
    assert torch.equal(rows.read(0, 23), matrix)
    assert torch.equal(rows.read(4, 9), matrix[4:9])
    assert rows.read(30, 40).shape == (0, 17)
    # Files readable by the format's own library.
    if suffix == ".npy":
        np.testing.assert_array_equal(np.load(path), matrix.numpy())
    else:
        from safetensors.torch import load_file

        assert torch.equal(load_file(path)["weights"], matrix)


def test_reads_files_written_by_numpy_and_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    matrix = torch.randn(9, 4)
    np.save(tmp_path / "a.npy", matrix.numpy())
    save_file({"weights": matrix, "other": torch.zeros(3)}, tmp_path / "b.safetensors")
    save_file({"x": matrix, "y": matrix * 2}, tmp_path / "c.safetensors")
    assert torch.equal(FileRows(tmp_path / "a.npy").read(2, 7), matrix[2:7])
    assert torch.equal(FileRows(tmp_path / "b.safetensors").read(0, 9), matrix)
    assert torch.equal(FileRows(tmp_path / "c.safetensors", name="y").read(0, 9), matrix * 2)
    with pytest.raises(ValueError, match=r"holds 2-D tensors \['x', 'y'\]; pass name="):
        FileRows(tmp_path / "c.safetensors")
    np.save(tmp_path / "f.npy", np.asfortranarray(matrix.numpy()))
    with pytest.raises(ValueError, match=r"must hold a 2-D C-ordered"):
        FileRows(tmp_path / "f.npy")
    with open(tmp_path / "b.safetensors", "r+b") as handle:
        handle.truncate(200)
    with pytest.raises(ValueError, match=r"is truncated"):
        FileRows(tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match=r"must be .safetensors or .npy"):
        MatrixWriter(tmp_path / "x.csv", 1, 1)
    with pytest.raises(ValueError, match=r"got 1 rows, 2 declared"), MatrixWriter(tmp_path / "short.npy", 2, 3) as w:
        w.append(torch.zeros(3))


def test_concatenated_shards(tmp_path) -> None:
    matrix = torch.randn(10, 6)
    np.save(tmp_path / "a.npy", matrix[:4].numpy())
    np.save(tmp_path / "b.npy", matrix[4:].numpy())
    rows = ConcatRows([FileRows(tmp_path / "a.npy"), FileRows(tmp_path / "b.npy")])
    assert rows.shape == (10, 6)
    assert torch.equal(rows.read(2, 9), matrix[2:9])


# ---------------------------------------------------------------- statistics


def test_column_statistics_match_torch_and_floor_the_std() -> None:
    x = torch.randn(300, 40, dtype=torch.float64) * torch.linspace(0.1, 3, 40, dtype=torch.float64) + 5
    x[:, 7] = 2.5  # a constant dimension
    stats = column_statistics(TensorRows(x.float()), block_rows=64, std_floor=1e-3)
    # Block statistics are accumulated in float64 and rounded to float32 once per block.
    torch.testing.assert_close(stats.mean, x.float().double().mean(0), rtol=1e-7, atol=1e-9)
    expected = x.float().double().std(0)
    torch.testing.assert_close(stats.raw_std, expected, rtol=1e-7, atol=1e-9)
    assert stats.std[7] == 1e-3 and stats.floored == 1
    automatic = column_statistics(TensorRows(x.float()), block_rows=1000)
    assert automatic.floor == pytest.approx(1e-3 * float(expected[expected > 0].median()))
    with pytest.raises(ValueError, match=r"argument 'std_floor' must be > 0"):
        column_statistics(TensorRows(x), std_floor=0.0)


def test_nan_in_the_data_names_the_model_and_tensor(tmp_path, planted_folder) -> None:
    dataset = LoraDataset.from_folder(planted_folder)
    matrix = dataset.to_tensor()
    matrix[12, 40] = float("nan")
    metadata = dataset.metadata
    with MatrixWriter(tmp_path / "bad.safetensors", *matrix.shape, metadata=metadata) as writer:
        writer.append(matrix)
    location = re.escape(dataset.layout.locate(40))
    with pytest.raises(ValueError, match=rf"NaN or Inf at row 12 \(model 'model12'\), dimension 40 \({location}\)"):
        fit_streaming(tmp_path / "bad.safetensors", 3)


def test_too_few_models_and_bad_component_counts() -> None:
    with pytest.raises(ValueError, match=r"at least 2 models, got 1"):
        fit_streaming(torch.randn(1, 5), 1)
    with pytest.raises(ValueError, match=r"'n_components' must be in \[1, min\(N - 1, D\)\] = \[1, 9\]"):
        fit_streaming(torch.randn(10, 20), 10)
    with pytest.raises(ValueError, match=r"'n_components' must be in"):
        fit_exact(torch.randn(10, 20), 0)


# ---------------------------------------------------------------- fits


@pytest.fixture(scope="module")
def planted_matrix(tmp_path_factory, planted_folder):
    path = tmp_path_factory.mktemp("matrix") / "weights.safetensors"
    LoraDataset.from_folder(planted_folder).write_matrix(path)
    return path


@pytest.fixture(scope="module")
def exact_space(planted_matrix):
    return fit_exact(planted_matrix, 10)


def test_exact_fit_recovers_the_planted_subspace(exact_space, planted) -> None:
    fitted_span = exact_space.std[:, None].double() * exact_space.basis[:, :5].double()
    angles = principal_angles(planted.planted_span, fitted_span)
    # Expected error ~ noise * sqrt(D / N) / smallest planted scale = 0.1 * sqrt(624 / 80) / 3 ~ 0.09;
    # unrelated 5-d subspaces of R^624 are at ~pi/2.
    assert float(angles.max()) < 0.2, angles
    # Components beyond the planted rank only carry noise.
    ratios = exact_space.explained_variance_ratio
    assert float(ratios[:5].sum()) > 0.9 and float(ratios[5]) < 0.01
    basis = exact_space.basis.double()
    torch.testing.assert_close(basis.T @ basis, torch.eye(10, dtype=torch.float64), atol=1e-5, rtol=0)


def test_exact_fit_matches_a_dense_svd(planted) -> None:
    x = planted.weights.double()
    z = (x - x.mean(0)) / x.std(0)
    _, s, vh = torch.linalg.svd(z, full_matrices=False)
    space = fit_exact(planted.weights, 6, std_floor=1e-12)
    torch.testing.assert_close(space.singular_values.double(), s[:6], rtol=1e-5, atol=1e-6)
    angles = principal_angles(vh[:6].T, space.basis.double())
    assert float(angles.max()) < 1e-3
    assert space.total_variance == pytest.approx(float((z**2).sum()), rel=1e-6)


@pytest.mark.parametrize("gram_memory", [2**31, 0], ids=["gram_cache", "two_pass"])
def test_streaming_fit_matches_the_exact_fit(planted_matrix, exact_space, gram_memory) -> None:
    space = fit_streaming(planted_matrix, 10, gram_memory=gram_memory, memory=2**17)  # many small blocks
    assert ("Gram cache" in space.info["method"]) == (gram_memory > 0)
    top = slice(0, 5)
    torch.testing.assert_close(
        space.singular_values[top].double(), exact_space.singular_values[top].double(), rtol=1e-4, atol=0
    )
    ratio = space.explained_variance_ratio.sum() / exact_space.explained_variance_ratio.sum()
    assert abs(float(ratio) - 1) < 1e-3
    # Same components with the same signs (sign convention is deterministic).
    cosines = (space.basis[:, top].double() * exact_space.basis[:, top].double()).sum(0)
    assert float(cosines.min()) > 0.9999, cosines
    torch.testing.assert_close(space.coefficients[:, top], exact_space.coefficients[:, top], rtol=1e-3, atol=1e-3)
    assert space.layout == exact_space.layout and space.names == exact_space.names
    assert space.names[:2] == ["model0", "model1"]


def test_streaming_fit_is_seeded(planted) -> None:
    a = fit_streaming(planted.weights, 5, seed=3, n_iter=1)
    b = fit_streaming(planted.weights, 5, seed=3, n_iter=1)
    c = fit_streaming(planted.weights, 5, seed=4, n_iter=1)
    assert torch.equal(a.basis, b.basis)
    assert not torch.equal(a.basis, c.basis)
    assert float(principal_angles(a.basis, c.basis).max()) < 1e-2


def test_projection_of_the_training_models_gives_their_coefficients(exact_space, planted) -> None:
    coefficients = exact_space.project(planted.weights)
    torch.testing.assert_close(coefficients, exact_space.coefficients, rtol=1e-4, atol=1e-3)
    rebuilt = exact_space.reconstruct(coefficients)
    residual = (rebuilt - planted.weights) / planted.sigma.float()
    # Only the isotropic noise outside the 10 components is lost (noise level 0.1 per dimension).
    assert float(residual.pow(2).mean().sqrt()) < 0.11


def test_fit_from_npy_shards_and_in_memory_tensors_agree(tmp_path, planted) -> None:
    np.save(tmp_path / "a.npy", planted.weights[:30].numpy())
    np.save(tmp_path / "b.npy", planted.weights[30:].numpy())
    from_files = fit_exact([tmp_path / "a.npy", tmp_path / "b.npy"], 4)
    in_memory = fit_exact(planted.weights, 4)
    torch.testing.assert_close(from_files.basis, in_memory.basis)
    assert from_files.layout is None and from_files.names is None
    streamed = fit_streaming([tmp_path / "a.npy", tmp_path / "b.npy"], 4, memory=2**16)
    torch.testing.assert_close(streamed.basis, fit_streaming(planted.weights, 4).basis, rtol=1e-4, atol=1e-5)


def test_save_and_load_round_trip(tmp_path, exact_space) -> None:
    path = exact_space.save(tmp_path / "space.safetensors")
    loaded = WeightSpace.load(path)
    for name in ("mean", "std", "basis", "singular_values", "coefficients"):
        assert torch.equal(getattr(loaded, name), getattr(exact_space, name)), name
    assert loaded.layout == exact_space.layout and loaded.names == exact_space.names
    assert loaded.n_models == exact_space.n_models and loaded.total_variance == exact_space.total_variance
    assert loaded.info == json.loads(json.dumps(exact_space.info))
    half = exact_space.to(basis_dtype=torch.bfloat16)
    loaded_half = WeightSpace.load(half.save(tmp_path / "half.safetensors"))
    assert loaded_half.basis.dtype == torch.bfloat16
    from safetensors.torch import save_file

    save_file({"mean": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"is not a saved weight space"):
        WeightSpace.load(tmp_path / "other.safetensors")


def test_space_validates_its_tensors(exact_space) -> None:
    from dataclasses import replace

    bad_std = exact_space.std.clone()
    bad_std[3] = 0
    with pytest.raises(ValueError, match=r"argument 'std' must be > 0 everywhere, got 0.0 at index \(3,\)"):
        replace(exact_space, std=bad_std)
    with pytest.raises(ValueError, match=r"argument 'mean' must have shape"):
        replace(exact_space, mean=exact_space.mean[:-1])
    bad_basis = exact_space.basis.clone()
    bad_basis[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"argument 'basis' must be finite"):
        replace(exact_space, basis=bad_basis)
    truncated = exact_space.truncate(3)
    assert truncated.n_components == 3 and truncated.coefficients.shape == (80, 3)
    with pytest.raises(ValueError, match=r"'weights' must be finite"):
        exact_space.project(torch.full((exact_space.dim,), math.nan))
