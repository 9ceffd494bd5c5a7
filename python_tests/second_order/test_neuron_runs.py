"""Neuron statistics at dataset scale: candidate merging, run folders (resume, damage), statistics files, and
2 gloo ranks equal to 1 (collect_neuron_statistics under torch.distributed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vision_kernels.clip as vc
from vision_kernels.clip.neuron_candidates import merge, select
from vision_kernels.clip.neuron_runs import load_neuron_statistics, run_neuron_statistics, save_neuron_statistics
from vision_kernels.testing import run_ranks

NEURONS = [1, 5, 9, 77, 100]


def test_select_is_a_total_order_independent_of_row_order() -> None:
    norms = torch.tensor([[1.0, 2.0], [3.0, 2.0], [3.0, 5.0], [0.5, 2.0]], dtype=torch.float64)
    positions = torch.tensor([[7, 4], [2, 9], [5, 1], [0, 3]])
    rows = select(norms, positions, 3)
    assert positions.gather(0, rows).T.tolist() == [[2, 5, 7], [1, 3, 4]]  # ties (3.0; 2.0) -> smaller position
    shuffled = torch.tensor([3, 1, 0, 2])
    again = select(norms[shuffled], positions[shuffled], 3)
    assert torch.equal(positions[shuffled].gather(0, again), positions.gather(0, rows))


def test_merging_splits_equals_one_selection() -> None:
    generator = torch.Generator().manual_seed(0)
    norms = torch.rand(40, 6, generator=generator, dtype=torch.float64).round(decimals=1)  # many ties
    positions = torch.arange(40)[:, None].expand(-1, 6)
    effects = torch.randn(40, 6, 3, generator=generator)
    whole = merge(None, norms, positions, effects, 5)
    parts = None
    for start in (24, 0, 13, 31):  # splits merged in any order
        stop = {0: 13, 13: 24, 24: 31, 31: 40}[start]
        parts = merge(parts, norms[start:stop], positions[start:stop], effects[start:stop], 5)
    assert parts is not None
    assert torch.equal(parts.positions, whole.positions) and torch.equal(parts.effects, whole.effects)


def _loader(images: torch.Tensor, unreadable: tuple[int, ...] = (), batch: int = 3):
    """An image loader over a tensor: batches of the given positions, skipping 'unreadable' ones."""

    def load(positions):
        good = [p for p in positions if p not in unreadable]
        for start in range(0, len(good), batch):
            chunk = torch.tensor(good[start : start + batch], dtype=torch.int64)
            yield images[chunk], chunk

    return load


def test_run_equals_in_memory_statistics_and_resumes(make_tiny_vit, make_images, tmp_path) -> None:
    model = make_tiny_vit(layers=3)
    images = make_images(14, seed=5)
    inputs = [f"img-{i}.png" for i in range(14)]
    want = vc.collect_neuron_statistics(model, images, 0, NEURONS, top_k=4, batch_size=4)
    got = run_neuron_statistics(model, inputs, _loader(images), tmp_path / "run", 0, NEURONS, top_k=4, shard_size=5)
    for name in ("mean", "top_norms", "principal", "explained"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-7)
    assert torch.equal(got.top_images, want.top_images) and got.count == 14
    # a damaged shard of each pass is recomputed, not trusted; the result is unchanged
    for shard in (tmp_path / "run" / "sums" / "shard-000001.safetensors", tmp_path / "run" / "top" /
                  "shard-000002.safetensors"):  # fmt: skip
        shard.write_bytes(shard.read_bytes()[:-5])
    again = run_neuron_statistics(model, inputs, _loader(images), tmp_path / "run", 0, NEURONS, top_k=4, shard_size=5)
    torch.testing.assert_close(again.principal, got.principal, rtol=0, atol=0)
    loaded, settings = load_neuron_statistics(tmp_path / "run" / "statistics.safetensors")
    assert torch.equal(loaded.top_images, got.top_images) and settings["neurons"] == NEURONS
    with pytest.raises(FileExistsError, match=r"holds a run with other settings \(options.top_k: 4 there, 3 now"):
        run_neuron_statistics(model, inputs, _loader(images), tmp_path / "run", 0, NEURONS, top_k=3, shard_size=5)


def test_unreadable_images_are_skipped_and_listed(make_tiny_vit, make_images, tmp_path) -> None:
    model = make_tiny_vit(layers=3)
    images = make_images(10, seed=6)
    inputs = [f"img-{i}.png" for i in range(10)]
    got = run_neuron_statistics(model, inputs, _loader(images, unreadable=(2, 7)), tmp_path / "run", 0, NEURONS,
                                top_k=3, shard_size=4)  # fmt: skip
    kept = torch.tensor([i for i in range(10) if i not in (2, 7)])
    want = vc.collect_neuron_statistics(model, images[kept], 0, NEURONS, top_k=3)
    assert torch.equal(got.top_images, kept[want.top_images]) and got.count == 8
    _, settings = load_neuron_statistics(tmp_path / "run" / "statistics.safetensors")
    assert settings["skipped"] == [2, 7]


def test_statistics_file_is_validated(make_tiny_vit, make_images, tmp_path) -> None:
    stats = vc.neuron_statistics(torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(1)), top_k=2)
    path = save_neuron_statistics(stats, tmp_path / "s.safetensors", {"a": 1})
    loaded, settings = load_neuron_statistics(path)
    assert torch.equal(loaded.top_images, stats.top_images) and settings == {"a": 1}
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(ValueError, match=r"load_neuron_statistics: .* is not valid neuron statistics: cannot be read"):
        load_neuron_statistics(path)
    with pytest.raises(FileNotFoundError, match=r"argument 'path' must be a statistics file"):
        load_neuron_statistics(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"mean": torch.zeros(3, 4)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"header format must be"):
        load_neuron_statistics(tmp_path / "other.safetensors")


def test_run_refuses_a_foreign_folder_and_no_readable_image(make_tiny_vit, make_images, tmp_path) -> None:
    model = make_tiny_vit(layers=3)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"is not empty and holds no neuron run"):
        run_neuron_statistics(model, ["a"], _loader(make_images(1)), tmp_path / "photos", 0, NEURONS, top_k=1)
    with pytest.raises(ValueError, match=r"holds no readable image \(3 inputs\)"):
        run_neuron_statistics(model, ["a", "b", "c"], _loader(make_images(3), unreadable=(0, 1, 2)), tmp_path / "r",
                              0, NEURONS, top_k=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"argument 'top_k' must be in \[1, 3\]"):
        run_neuron_statistics(model, ["a", "b", "c"], _loader(make_images(3)), tmp_path / "r2", 0, NEURONS, top_k=4)


_RANK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from open_clip.transformer import VisionTransformer
    import vision_kernels.clip as vc
    from vision_kernels.runs import init_from_env
    ranks = init_from_env()
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=2.0,
                              output_dim=24).eval()
    images = torch.randn(13, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    mine = images[:6] if ranks.rank == 0 else images[6:]
    if ranks.world == 1:
        mine = images
    stats = vc.collect_neuron_statistics(model, mine, 1, [0, 3, 7, 64, 100], top_k=5, batch_size=4)
    if ranks.main:
        torch.save({k: getattr(stats, k) for k in ("mean", "top_norms", "top_images", "principal", "explained")},
                   sys.argv[1])
    if ranks.world > 1:
        torch.distributed.destroy_process_group()
    """
)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_in_memory(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    env = dict(os.environ, VK_PROGRESS="0")
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt")], check=True, timeout=600, env=env)
    assert [r.returncode for r in run_ranks([sys.executable, script, tmp_path / "two.pt"])] == [0, 0]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert torch.equal(one["top_images"], two["top_images"])
    for name in ("mean", "top_norms", "principal", "explained"):  # batches differ (6 + 7 images): float32 rounding
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-7)


_FAILING_RANK = textwrap.dedent(
    """
    import sys, torch
    from open_clip.transformer import VisionTransformer
    from vision_kernels.runs import init_from_env
    from vision_kernels.clip.neuron_runs import run_neuron_statistics
    ranks = init_from_env()
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, width=64, layers=3, heads=4, mlp_ratio=2.0,
                              output_dim=24).eval()
    images = torch.randn(8, 3, 32, 32)
    def load(positions):
        if ranks.rank == 1:
            raise OSError("disk gone on rank 1")
        yield images[positions], torch.tensor(positions)
    try:
        run_neuron_statistics(model, [str(i) for i in range(8)], load, sys.argv[1], 1, [0, 1], top_k=2, shard_size=2)
    except Exception as error:
        print(f"rank {ranks.rank}: {type(error).__name__}: {error}", flush=True)
        sys.exit(3)
    """
)


@pytest.mark.slow
def test_a_failing_rank_stops_every_rank(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(_FAILING_RANK)
    results = run_ranks([sys.executable, script, tmp_path / "run"], capture=True)  # would hang without the check
    outputs = [r.stdout for r in results]
    assert [r.returncode for r in results] == [3, 3]
    assert "rank 0: RuntimeError: " in outputs[0] and "another rank failed" in outputs[0]
    assert "rank 1: OSError: disk gone on rank 1" in outputs[1]
