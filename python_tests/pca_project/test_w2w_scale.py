"""The scale benchmark (benchmarks/w2w_scale.py) in small: planted float16 weights streamed to disk, a
streaming fit that reads bounded row blocks and whose memory does not grow with the number of models,
explained variance within 1% of the exact PCA."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vision_kernels.weightspace import FileRows, fit_exact, fit_streaming

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "w2w_scale.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("w2w_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CountingRows:
    """A RowMatrix that records the largest block read (the fit must stream, never read everything)."""

    def __init__(self, rows: FileRows) -> None:
        self.rows, self.largest, self.reads = rows, 0, 0
        self.metadata = rows.metadata

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.rows.dtype

    def read(self, start: int, stop: int) -> torch.Tensor:
        self.largest = max(self.largest, stop - start)
        self.reads += 1
        return self.rows.read(start, stop)


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scale") / "weights.safetensors"
    info = _benchmark_module().generate(path, rows=600, dims=1500, rank=40, noise=0.05, block=64, seed=1)
    assert info["bytes"] > 600 * 1500 * 2
    return path


def test_generation_is_streamed_and_reproducible(tmp_path, planted_file) -> None:
    module = _benchmark_module()
    again = tmp_path / "again.safetensors"
    module.generate(again, rows=600, dims=1500, rank=40, noise=0.05, block=100, seed=1)  # other block size
    rows = FileRows(planted_file)
    assert rows.dtype == torch.float16 and rows.shape == (600, 1500)
    # One generator per block start: blocks of 64 and 100 rows differ, but each is reproducible.
    module.generate(tmp_path / "third.safetensors", rows=600, dims=1500, rank=40, noise=0.05, block=64, seed=1)
    assert (tmp_path / "third.safetensors").read_bytes() == planted_file.read_bytes()


def test_streaming_fit_reads_bounded_blocks_and_explains_the_variance_of_the_exact_fit(planted_file) -> None:
    rows = CountingRows(FileRows(planted_file))
    memory = 4 * 1500 * 50 * 4  # blocks of 50 rows (memory / 4 bytes of float32 rows)
    space = fit_streaming(rows, 60, n_iter=2, memory=memory, gram_memory=0, show_progress=False)
    assert rows.largest == 50
    # statistics + (1 + n_iter) applications x 2 passes + final pass + coefficients, 12 blocks each
    assert rows.reads == 12 * (1 + 3 * 2 + 1 + 1)
    exact = fit_exact(planted_file, 60, show_progress=False)
    gap = float(space.explained_variance_ratio.sum() / exact.explained_variance_ratio.sum()) - 1
    assert abs(gap) < 0.01, gap
    # The benchmark's check: exact and streaming on a subsample of the rows agree within 1% too.
    sample = FileRows(planted_file).read(0, 600)[::3].float()  # [200, D]
    exact_sample = fit_exact(sample, 60, show_progress=False)
    streamed_sample = fit_streaming(sample, 60, n_iter=2, gram_memory=0, show_progress=False)
    ratio = streamed_sample.explained_variance_ratio.sum() / exact_sample.explained_variance_ratio.sum()
    assert abs(float(ratio) - 1) < 0.01


_PEAK = textwrap.dedent(
    """
    import json, resource, sys, torch
    from vision_kernels.weightspace import FileRows, fit_streaming
    torch.set_num_threads(1)
    rows = FileRows(sys.argv[1])
    count = int(sys.argv[2])

    class Head:  # the first `count` models of the file
        shape, dtype, metadata = (count, rows.shape[1]), rows.dtype, {}
        def read(self, start, stop):
            return rows.read(start, min(stop, count))

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fit_streaming(Head(), 20, n_iter=1, memory=2**22, gram_memory=0, show_progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kb": peak - before}))
    """
)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_models(tmp_path) -> None:
    """Fits of 400 and 3,200 models of 8,000 dimensions: holding the data would cost 90 MB more for
    the larger; the fit's own per-model state (sketches, coefficients) is ~1 MB."""
    path = tmp_path / "weights.safetensors"
    _benchmark_module().generate(path, rows=3200, dims=8000, rank=30, noise=0.05, block=256)

    def growth(count: int) -> float:
        result = subprocess.run(
            [sys.executable, "-c", _PEAK, str(path), str(count)], check=True, capture_output=True, text=True
        )
        return json.loads(result.stdout)["growth_kb"] / 1024

    small, large = growth(400), growth(3200)
    in_memory = (3200 - 400) * 8000 * 4 / 2**20  # [N, D] float32 of the extra models
    assert large - small < in_memory / 4, (small, large)
