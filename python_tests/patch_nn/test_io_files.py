"""Image and video files that cannot be trusted, and saves that cannot be interrupted (issue 16
items 2, 4, 6, 7 for read_image/write_image/read_video/write_video)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_kernels._files import is_temporary_name
from vision_kernels._optional import MissingDependencyError
from vision_kernels.patchnn import read_image, read_video, write_image, write_video


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if is_temporary_name(p.name)]


def test_read_image_names_the_function_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"read_image: no such file: '.*missing.png'"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(IsADirectoryError, match=r"read_image: expected an image file, got the folder"):
        read_image(tmp_path)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ValueError, match=r"read_image: cannot read '.*text.png' as an image"):
        read_image(tmp_path / "text.png")
    good = write_image(tmp_path / "good.png", torch.rand(16, 16, 3))
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"read_image: cannot read '.*truncated.png' as an image"):
        read_image(tmp_path / "truncated.png")
    with pytest.raises(ValueError, match=r"read_image: argument 'channels' must be 1, 3 or None, got 2"):
        read_image(good, channels=2)


def test_write_image_refuses_nan_inf_and_unknown_suffixes_before_writing(tmp_path: Path) -> None:
    target = write_image(tmp_path / "keep.png", torch.zeros(4, 4, 3))
    before = target.read_bytes()
    for bad in (float("nan"), float("inf")):
        image = torch.rand(4, 4, 3)
        image[1, 2, 0] = bad
        with pytest.raises(ValueError, match=r"write_image: argument 'image' holds NaN or Inf values"):
            write_image(target, image)
    with pytest.raises(ValueError, match=r"write_image: argument 'path' must end in one of .png"):
        write_image(tmp_path / "x.xyz", torch.rand(4, 4, 3))
    with pytest.raises(ValueError, match=r"must have shape \[H, W, 1 or 3\]"):
        write_image(tmp_path / "x.png", torch.rand(0, 4, 3))
    assert target.read_bytes() == before and not (tmp_path / "x.xyz").exists() and not _hidden(tmp_path)


def test_read_video_refuses_a_still_image(tmp_path: Path) -> None:
    png = write_image(tmp_path / "frame.png", torch.rand(16, 16, 3))
    with pytest.raises(ValueError, match=r"read_video: cannot read '.*frame.png' as a video: it is a single image"):
        read_video(png)
    disguised = tmp_path / "frame.mp4"
    disguised.write_bytes(png.read_bytes())  # a PNG under a video suffix: FFmpeg's png_pipe demuxer
    with pytest.raises(ValueError, match=r"it is a single image, not a video"):
        read_video(disguised)


def test_write_video_refuses_nan_and_inf_frames(tmp_path: Path) -> None:
    video = torch.rand(4, 16, 16, 3)
    video[3, 5, 5, 1] = float("nan")
    for name in ("v.mp4", "v.gif", "frames"):
        with pytest.raises(ValueError, match=r"write_video: argument 'video' holds NaN or Inf values"):
            write_video(tmp_path / name, video)
    video[3, 5, 5, 1] = float("-inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        write_video(tmp_path / "v.mp4", video.numpy())
    assert list(tmp_path.iterdir()) == []


def test_missing_av_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(MissingDependencyError, match=r"read_video needs av.*pip install 'vision-kernels\[video\]'"):
        read_video(clip)
    with pytest.raises(MissingDependencyError, match=r"write_video needs av"):
        write_video(tmp_path / "out.mp4", torch.rand(3, 16, 16, 3))
    assert not (tmp_path / "out.mp4").exists() and not _hidden(tmp_path)
    write_video(tmp_path / "out.gif", torch.rand(3, 16, 16, 3))  # GIFs need Pillow only


# The child starts a save whose writer stops half-way (the library's own writer is wrapped so that
# it writes part of the file, then reports and sleeps); the parent SIGKILLs it there.
_KILLED_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    from pathlib import Path
    import vision_kernels.patchnn.video_io as video_io
    from PIL import Image
    from vision_kernels.patchnn import write_image, write_video

    kind, target = sys.argv[1], Path(sys.argv[2])

    def stall(path):
        Path(path).write_bytes(b"half written")
        print("stalled", flush=True)
        time.sleep(600)

    if kind == "image":
        Image.Image.save = lambda self, path, *a, **k: stall(path)
        write_image(target, torch.rand(8, 8, 3))
    else:
        video_io._write_av = lambda path, frames, fps: stall(path)
        write_video(target, torch.rand(3, 16, 16, 3), fps=5)
    """
)


@pytest.mark.parametrize(("kind", "name"), [("image", "picture.png"), ("video", "clip.mp4")])
def test_sigkill_mid_save_keeps_the_old_file_and_the_next_save_cleans_up(tmp_path: Path, kind: str, name: str) -> None:
    target = tmp_path / name
    if kind == "image":
        old = write_image(target, torch.full((8, 8, 3), 0.25))
    else:
        old = write_video(target, torch.full((3, 16, 16, 3), 0.25), fps=5)
    before = old.read_bytes()
    script = tmp_path / "save.py"
    script.write_text(_KILLED_SAVE)
    child = subprocess.Popen(
        [sys.executable, str(script), kind, str(target)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "stalled", child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert target.read_bytes() == before  # the previous file survives under its name
    if kind == "image":
        assert torch.allclose(read_image(target), torch.full((8, 8, 3), 0.25), atol=1 / 255)
    else:
        assert read_video(target)[0].shape == (3, 16, 16, 3)
    assert len(_hidden(tmp_path)) == 1  # the killed writer's partial file, under a hidden temporary name
    deadline = time.monotonic() + 30
    while _hidden(tmp_path) and time.monotonic() < deadline:  # the next save removes it (its pid is gone)
        if kind == "image":
            write_image(tmp_path / "next.png", torch.rand(4, 4, 3))
        else:
            write_video(tmp_path / "next.gif", torch.rand(3, 16, 16, 3))
    assert not _hidden(tmp_path)


def test_video_folder_output_is_replaced_whole(tmp_path: Path) -> None:
    folder = write_video(tmp_path / "frames", torch.rand(5, 8, 8, 3))
    write_video(folder, np.zeros((2, 8, 8, 3), dtype=np.uint8))
    assert sorted(p.name for p in folder.iterdir()) == ["00001.png", "00002.png"]
    assert not _hidden(tmp_path)
