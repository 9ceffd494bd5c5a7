"""Batch mode of ``gpnn``/``vgpnn generate`` and ``retarget``: folders and patterns of inputs, one
output per input and sample, finished outputs skipped on rerun, failures listed, files split over
two gloo ranks (issue 14 item 5)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from vision_kernels.cli import main
from vision_kernels.patchnn import read_image, read_video, write_image, write_video
from vision_kernels.testing import run_ranks

FAST = ["--patch-size", "5", "--coarsest", "12", "--iterations", "1", "--quiet"]
VIDEO_FAST = ["--patch-size", "3", "5", "5", "--coarsest", "12", "--iterations", "1", "--quiet"]


def _images(folder: Path, names: list[str], size: tuple[int, int] = (20, 26)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    return [write_image(folder / name, torch.rand(*size, 3, generator=generator)) for name in names]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_generate_folder_writes_every_sample_and_skips_them_on_rerun(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "in", ["b.png", "a.jpg"])
    out = tmp_path / "out"
    code, log = _run(["gpnn", "generate", str(tmp_path / "in"), "-o", str(out), "--count", "2", *FAST], capsys)
    assert code == 0, log
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_0.png", "a_1.png", "b_0.png", "b_1.png"]
    assert all(read_image(out / n).shape == (20, 26, 3) for n in names)
    assert "4 written, 0 skipped" in log
    assert not torch.equal(read_image(out / "a_0.png"), read_image(out / "a_1.png"))  # seeds 0 and 1
    stamps = {n: (out / n).stat().st_mtime_ns for n in names}
    (out / "b_1.png").unlink()
    code, log = _run(["gpnn", "generate", str(tmp_path / "in"), "-o", str(out), "--count", "2", *FAST], capsys)
    assert code == 0 and "1 written, 3 skipped" in log, log
    assert all((out / n).stat().st_mtime_ns == stamps[n] for n in names if n != "b_1.png")
    assert (out / "b_1.png").exists()
    code, log = _run(
        ["gpnn", "generate", str(tmp_path / "in"), "-o", str(out), "--count", "2", "--overwrite", *FAST], capsys
    )
    assert code == 0 and "4 written, 0 skipped" in log, log


def test_glob_pattern_format_and_retarget(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "in", ["x1.png", "x2.png", "other.bmp"])
    out = tmp_path / "out"
    pattern = str(tmp_path / "in" / "x*.png")
    code, log = _run(
        ["gpnn", "retarget", pattern, "-o", str(out), "--size", "16", "30", "--format", "jpg", *FAST], capsys
    )
    assert code == 0, log
    assert sorted(p.name for p in out.iterdir()) == ["x1.jpg", "x2.jpg"]
    assert read_image(out / "x1.jpg").shape == (16, 30, 3)


def test_single_input_into_a_folder_and_single_file_output(tmp_path: Path, capsys) -> None:
    (source,) = _images(tmp_path, ["cat.png"])
    code, log = _run(["gpnn", "generate", str(source), "-o", str(tmp_path / "one"), *FAST], capsys)
    assert code == 0 and (tmp_path / "one" / "cat.png").exists(), log
    code, log = _run(["gpnn", "generate", str(source), "-o", str(tmp_path / "s.png"), "--count", "2", *FAST], capsys)
    assert code == 0 and (tmp_path / "s_0.png").exists() and (tmp_path / "s_1.png").exists(), log


def test_a_bad_input_is_listed_and_the_others_are_written(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "in", ["good.png"])
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    out = tmp_path / "out"
    code, log = _run(["gpnn", "generate", str(tmp_path / "in"), "-o", str(out), *FAST], capsys)
    assert code == 2, log
    assert "broken.png" in log and "1 written, 0 skipped, 1 failed" in log
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


def test_colliding_output_names_are_refused_before_work(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "in", ["same.png", "same.jpg"])
    code, log = _run(["gpnn", "generate", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *FAST], capsys)
    assert code == 2 and "would both write same.png" in log
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_vgpnn_generate_folder_of_videos(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    generator = torch.Generator().manual_seed(2)
    for name in ("one.gif", "two.gif"):
        write_video(folder / name, torch.rand(6, 20, 24, 3, generator=generator), fps=8)
    out = tmp_path / "out"
    argv = ["vgpnn", "generate", str(folder), "-o", str(out), "--format", "gif", *VIDEO_FAST]
    code, log = _run(argv, capsys)
    assert code == 0, log
    assert sorted(p.name for p in out.iterdir()) == ["one.gif", "two.gif"]
    video, fps = read_video(out / "one.gif")
    assert video.shape == (6, 20, 24, 3) and abs(fps - 8) < 1
    code, log = _run(argv, capsys)
    assert code == 0 and "0 written, 2 skipped" in log, log
    # A folder of frames is one video, not a batch.
    frames = write_video(tmp_path / "frames", torch.rand(6, 20, 24, 3, generator=generator))
    code, log = _run(["vgpnn", "generate", str(frames), "-o", str(tmp_path / "f.gif"), *VIDEO_FAST], capsys)
    assert code == 0 and read_video(tmp_path / "f.gif")[0].shape == (6, 20, 24, 3), log


@pytest.mark.slow
def test_two_gloo_ranks_split_the_files(tmp_path: Path) -> None:
    _images(tmp_path / "in", ["a.png", "b.png", "c.png"])
    out = tmp_path / "out"
    argv = ["gpnn", "generate", str(tmp_path / "in"), "-o", str(out), "--count", "2", *FAST]
    results = run_ranks([sys.executable, "-m", "vision_kernels.cli", *argv], capture=True)
    logs = [r.stdout + r.stderr for r in results]
    assert [r.returncode for r in results] == [0, 0], logs
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_{i}.png" for s in "abc" for i in range(2))
    written = [{line.split("wrote ")[1].split(" ")[0] for line in log.splitlines() if "wrote " in line} for log in logs]
    assert written[0] and written[1] and not written[0] & written[1]  # disjoint shares, every file once
    assert len(written[0] | written[1]) == 6
    assert all("[rank" in log and "3 written, 0 skipped, 0 failed" in log for log in logs), logs
