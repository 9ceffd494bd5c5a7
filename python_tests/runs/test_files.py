"""Atomic saves (vision_kernels._files): the previous file survives any failure, even SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vision_kernels._files import (
    atomic_folder,
    atomic_open,
    atomic_path,
    clean_stale_temporaries,
    contained_path,
    file_sha256,
    is_temporary_name,
)


def test_atomic_open_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_open(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as temporary:
        assert temporary.suffix == ".png" and temporary.parent == tmp_path and is_temporary_name(temporary.name)
        temporary.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_atomic_path_errors_name_the_function(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="write_x: the folder of"),
        atomic_path(tmp_path / "no" / "a", function="write_x"),
    ):
        pass
    with pytest.raises(IsADirectoryError, match="write_x"), atomic_path(tmp_path, function="write_x"):
        pass
    with pytest.raises(RuntimeError, match="nothing was written"), atomic_path(tmp_path / "x"):
        pass
    with pytest.raises(ValueError, match="mode"), atomic_open(tmp_path / "x", "a"):
        pass


def test_atomic_folder_swaps_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "db"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as temporary:
        (temporary / "new.txt").write_text("new")
        assert not (target / "new.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    with pytest.raises(KeyError), atomic_folder(target) as temporary:
        (temporary / "broken.txt").write_text("x")
        raise KeyError("fail")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError), atomic_folder(tmp_path / "file"):
        pass


def test_contained_path_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "ok.bin").write_bytes(b"1")
    assert contained_path(tmp_path, "ok.bin", function="f", field="files") == (tmp_path / "ok.bin").resolve()
    for bad in ("../../../../etc/passwd", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="f: files .* points outside"):
            contained_path(tmp_path, bad, function="f", field="files")
    os.symlink("/etc", tmp_path / "link")
    with pytest.raises(ValueError, match="outside"):
        contained_path(tmp_path, "link/passwd", function="f", field="files")
    with pytest.raises(ValueError, match="non-empty"):
        contained_path(tmp_path, "", function="f", field="files")


_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from vision_kernels._files import atomic_open
    with atomic_open(sys.argv[1], "wb") as handle:
        handle.write(b"partial")
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
        handle.write(b"never")
    """
)


def test_sigkill_during_save_keeps_old_file_and_stale_temporary_is_cleaned(tmp_path: Path) -> None:
    target = tmp_path / "matrix.bin"
    target.write_bytes(b"previous content")
    before = file_sha256(target)
    process = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert file_sha256(target) == before
    leftovers = [p for p in tmp_path.iterdir() if is_temporary_name(p.name)]
    assert len(leftovers) == 1  # the killed writer's temporary, not under the final name
    time.sleep(0.05)
    assert clean_stale_temporaries(tmp_path) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["matrix.bin"]


def test_live_writers_temporaries_are_not_cleaned(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "x.bin") as temporary:
        temporary.write_bytes(b"1")
        assert clean_stale_temporaries(tmp_path) == []
        assert temporary.exists()
