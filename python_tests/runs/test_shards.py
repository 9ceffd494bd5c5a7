"""Sharded run folders (vision_kernels.runs): resume, refusal, damage detection, 2 gloo ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vision_kernels.runs import RunReader, RunSpec, ShardedRun
from vision_kernels.testing import run_ranks

INPUTS = [f"item-{i}" for i in range(10)]


def _result(name: str) -> torch.Tensor:
    seed = int(name.split("-")[1])
    return torch.rand(3, generator=torch.Generator().manual_seed(seed))


def _compute(
    folder: Path, options: dict | None = None, *, overwrite: bool = False, stop_after: int | None = None
) -> None:
    run = ShardedRun(folder, RunSpec("test.square", options or {"power": 2}, INPUTS, shard_size=3), overwrite=overwrite)
    for done, shard in enumerate(run.pending()):
        if stop_after is not None and done == stop_after:
            return
        values = torch.stack([_result(name) ** 2 for name in run.inputs(shard)])  # [n, 3]
        run.write(shard, {"values": values, "sum": values.double().sum(0)}, record={"skipped": []})
    run.finalize({"note": "ok"})


def test_run_writes_shards_and_manifest(tmp_path: Path) -> None:
    _compute(tmp_path / "run")
    reader = RunReader.open(tmp_path / "run", kind="test.square")
    assert [s.count for s in reader.shards] == [3, 3, 3, 1]
    assert reader.inputs() == INPUTS
    expected = torch.stack([_result(n) ** 2 for n in INPUTS])
    torch.testing.assert_close(reader.concatenated("values"), expected, rtol=0, atol=0)
    assert reader.extra == {"note": "ok"} and reader.records()[0] == {"skipped": []}
    reader.verify()


def test_resume_equals_uninterrupted_and_recomputes_damage(tmp_path: Path) -> None:
    _compute(tmp_path / "full")
    _compute(tmp_path / "part", stop_after=2)
    assert not (tmp_path / "part" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="unfinished"):
        RunReader.open(tmp_path / "part")
    # damage one finished shard: truncated, so its size no longer matches its record
    shard = tmp_path / "part" / "shard-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    _compute(tmp_path / "part")
    for name in sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.endswith(".safetensors")):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "part" / name).read_bytes()


def test_same_size_corruption_is_caught_by_checksum(tmp_path: Path) -> None:
    _compute(tmp_path / "run")
    shard = tmp_path / "run" / "shard-000002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its checksum"):
        RunReader.open(tmp_path / "run").verify()
    run = ShardedRun(tmp_path / "run", RunSpec("test.square", {"power": 2}, INPUTS, shard_size=3))
    assert [s.index for s in run.pending()] == [2]


def test_other_options_refused_unless_overwrite(tmp_path: Path) -> None:
    _compute(tmp_path / "run")
    with pytest.raises(FileExistsError, match=r"other settings \(options.power: 2 there, 3 now\)"):
        _compute(tmp_path / "run", {"power": 3})
    _compute(tmp_path / "run", {"power": 3}, overwrite=True)
    assert RunReader.open(tmp_path / "run").options == {"power": 3}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty and holds no run"):
        _compute(tmp_path / "other")


def test_damaged_manifest_is_refused(tmp_path: Path) -> None:
    _compute(tmp_path / "run")
    path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="points outside"):
        RunReader.open(tmp_path / "run")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RunReader.open(tmp_path / "run")


def test_bad_spec_arguments() -> None:
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        RunSpec("k", {}, INPUTS, shard_size=0)
    with pytest.raises(ValueError, match="line breaks"):
        RunSpec("k", {}, ["a\nb"], shard_size=1)
    with pytest.raises(TypeError):
        RunSpec("k", {"x": object()}, INPUTS, shard_size=1)


_RANK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from vision_kernels.runs import RunSpec, ShardedRun, all_reduce_sum, init_from_env
    ranks = init_from_env()
    inputs = [f"item-{i}" for i in range(10)]
    run = ShardedRun(sys.argv[1], RunSpec("test.square", {"power": 2}, inputs, shard_size=3))
    for shard in run.pending():
        values = torch.stack([torch.rand(3, generator=torch.Generator().manual_seed(int(n.split("-")[1]))) ** 2
                              for n in run.inputs(shard)])
        run.write(shard, {"values": values, "sum": values.double().sum(0)})
    run.finalize()
    total = torch.zeros(3, dtype=torch.float64)
    for shard in run.mine():
        total += run.read(shard.index)["sum"]
    all_reduce_sum(total)
    if ranks.main:
        torch.save(total, sys.argv[2])
    torch.distributed.destroy_process_group() if ranks.world > 1 else None
    """
)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), str(tmp_path / "one.pt")], check=True, timeout=300
    )
    results = run_ranks([sys.executable, script, tmp_path / "two", tmp_path / "two.pt"], timeout=300)
    assert [r.returncode for r in results] == [0, 0]
    one, two = RunReader.open(tmp_path / "one"), RunReader.open(tmp_path / "two")
    assert [r["sha256"] for r in one.manifest["shards"]] == [r["sha256"] for r in two.manifest["shards"]]
    torch.testing.assert_close(torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt"), rtol=1e-12, atol=0)
