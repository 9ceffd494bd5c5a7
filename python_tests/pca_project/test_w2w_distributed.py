"""``w2w collect`` and ``w2w fit`` on 2 gloo ranks (subprocesses) equal the 1-process run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vision_kernels.cli import main
from vision_kernels.runs import RunReader
from vision_kernels.testing import run_ranks
from vision_kernels.weightspace import MatrixWriter, WeightSpace, open_run_rows

pytestmark = pytest.mark.slow


def _two_ranks(*argv: object) -> list[subprocess.CompletedProcess]:
    """``python -m vision_kernels.cli ARGV`` as ranks 0 and 1 of a gloo group (what torchrun sets up)."""
    return run_ranks([sys.executable, "-m", "vision_kernels.cli", *argv], capture=True)


def test_collect_and_fit_on_two_ranks_equal_one_process(tmp_path: Path, planted_folder: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["w2w", "collect", str(planted_folder), "--out", str(one), "--shard-size", "12", "--quiet"]) == 0
    results = _two_ranks("w2w", "collect", planted_folder, "--out", two, "--shard-size", 12, "--quiet")
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    # Every shard is written once, by its rank, with the same bytes as the 1-process run.
    shards_one = RunReader.open(one).manifest["shards"]
    shards_two = RunReader.open(two).manifest["shards"]
    assert [s["sha256"] for s in shards_one] == [s["sha256"] for s in shards_two]
    assert RunReader.open(two).manifest["world_size"] == 2

    # Small row blocks (--memory-gb): 8 blocks of 10 rows, 4 per rank; the sketch needs 2 passes each.
    fit = ["--components", 6, "--seed", 5, "--memory-gb", 0.0001, "--no-gram", "--quiet"]
    assert main(["w2w", "fit", str(one), "--out", str(tmp_path / "one.safetensors"), *map(str, fit)]) == 0
    results = _two_ranks("w2w", "fit", two, "--out", tmp_path / "two.safetensors", *fit)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    single, double = WeightSpace.load(tmp_path / "one.safetensors"), WeightSpace.load(tmp_path / "two.safetensors")
    assert double.info["ranks"] == 2 and single.info["ranks"] == 1
    torch.testing.assert_close(double.mean, single.mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(double.std, single.std, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(double.singular_values, single.singular_values, rtol=1e-5, atol=0)
    torch.testing.assert_close(double.basis, single.basis, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(double.coefficients, single.coefficients, rtol=1e-4, atol=1e-4)
    assert double.names == single.names and double.layout == single.layout
    # ... and both equal the default single-process fit with the Gram cache, to float32 tolerance.
    assert main(["w2w", "fit", str(one), "--out", str(tmp_path / "gram.safetensors"), "--components", "6",
                 "--seed", "5", "--quiet"]) == 0  # fmt: skip
    gram = WeightSpace.load(tmp_path / "gram.safetensors")
    assert "Gram cache" in gram.info["method"]
    torch.testing.assert_close(double.singular_values[:5], gram.singular_values[:5], rtol=1e-4, atol=0)
    assert open_run_rows(two).shape == (80, single.dim)


def test_a_failure_on_one_rank_stops_both(tmp_path: Path, planted) -> None:
    """NaN in a row block of rank 1: rank 1 names the model, rank 0 stops too (no rank left waiting)."""
    weights = planted.weights.clone()
    weights[15, 3] = float("nan")  # row block 1 (rows 10-19) belongs to rank 1
    path = tmp_path / "weights.safetensors"
    with MatrixWriter(path, *weights.shape) as writer:
        writer.append(weights)
    results = _two_ranks("w2w", "fit", path, "--components", 3, "--out", tmp_path / "s.safetensors",
                         "--memory-gb", 0.0001, "--quiet")  # fmt: skip
    assert results[1].returncode == 2 and "NaN or Inf at row 15" in results[1].stderr, results[1].stderr
    assert results[0].returncode == 1 and "failed on another rank" in results[0].stderr, results[0].stderr
    assert not (tmp_path / "s.safetensors").exists()
