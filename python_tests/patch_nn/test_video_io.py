"""Video files in and out (mp4, gif, folders of frames), atomic writes, bad files, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vision_kernels.patchnn.video_io as video_io
from vision_kernels._files import is_temporary_name
from vision_kernels.cli import main as cli_main
from vision_kernels.patchnn import read_video, read_video_mask, write_frame_strip, write_video

from .conftest import SHAPE


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if is_temporary_name(p.name)]


def test_folder_round_trip_is_exact(tmp_path: Path, video) -> None:
    quantized = (video * 255).round() / 255
    path = write_video(tmp_path / "frames", video, fps=12)
    assert sorted(p.name for p in path.iterdir())[:2] == ["00001.png", "00002.png"]
    back, fps = read_video(path)
    assert back.dtype == torch.float32 and torch.allclose(back, quantized, atol=1e-6)
    assert fps == video_io.DEFAULT_FPS  # folders carry no frame rate
    assert read_video(path, fps=12)[1] == 12
    # Rewriting replaces the folder (no stale frames) and leaves no temporary behind.
    write_video(path, video[:3])
    assert len(list(path.iterdir())) == 3 and not _leftovers(tmp_path)


def test_folder_frames_sort_by_number(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "numbered"
    folder.mkdir()
    for i in (1, 2, 10):  # lexical order would put 10 before 2
        Image.fromarray(np.full((16, 16, 3), i * 20, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    frames, _ = read_video(folder)
    assert [round(float(f.mean()) * 255) for f in frames] == [20, 40, 200]


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".avi"])
def test_file_round_trip_keeps_fps_and_frames(tmp_path: Path, video, suffix: str) -> None:
    fps = 12.5 if suffix != ".gif" else 20.0
    path = write_video(tmp_path / f"clip{suffix}", video, fps=fps)
    back, read_fps = read_video(path)
    assert back.shape == video.shape and back.dtype == torch.float32
    assert abs(read_fps - fps) < 1e-6 * fps + (0.01 if suffix != ".gif" else 0.5)
    assert _psnr(back, video) > 20  # lossy: 4:2:0 chroma on a colour-noise texture, GIF palette
    assert not _leftovers(tmp_path)
    part, _ = read_video(path, start_frame=2, max_frames=3, max_side=20)
    assert part.shape == (3, 16, 20, 3)
    assert (
        _psnr(
            part,
            torch.nn.functional.interpolate(
                video[2:5].permute(0, 3, 1, 2), size=(16, 20), mode="bilinear", antialias=True
            ).permute(0, 2, 3, 1),
        )
        > 20
    )


def test_odd_sizes_are_padded_for_mp4(tmp_path: Path) -> None:
    odd = torch.rand(4, 17, 23, 3)
    back, _ = read_video(write_video(tmp_path / "odd.mp4", odd, fps=10))
    assert back.shape == (4, 18, 24, 3)


def test_uint8_and_gray_inputs_are_written(tmp_path: Path, video) -> None:
    as_bytes = (video * 255).round().to(torch.uint8)
    back, _ = read_video(write_video(tmp_path / "u8", as_bytes))
    assert torch.equal((back * 255).round().to(torch.uint8), as_bytes)
    gray = video.mean(dim=-1, keepdim=True)
    back, _ = read_video(write_video(tmp_path / "gray", gray.numpy()))
    assert back.shape == (*SHAPE, 3) and torch.allclose(back[..., 0], back[..., 2])


def test_failed_write_leaves_nothing_that_looks_complete(tmp_path: Path, video, monkeypatch) -> None:
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous result")

    def broken(path: Path, frames, fps: float) -> None:  # type: ignore[no-untyped-def]
        path.write_bytes(b"half a video")
        raise RuntimeError("disk full")

    monkeypatch.setattr(video_io, "_write_av", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_video(target, video)
    assert target.read_bytes() == b"previous result" and not _leftovers(tmp_path)
    with pytest.raises(RuntimeError, match="disk full"):
        write_video(tmp_path / "new.mp4", video)
    assert not (tmp_path / "new.mp4").exists() and not _leftovers(tmp_path)


def test_unreadable_and_empty_videos_give_clear_errors(tmp_path: Path, video) -> None:
    with pytest.raises(FileNotFoundError, match=r"read_video: no such file or folder: '.*missing.mp4'"):
        read_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 this is not a video" * 50)
    with pytest.raises(ValueError, match=r"read_video: cannot read '.*garbage.mp4' as a video"):
        read_video(garbage)
    bad_gif = tmp_path / "bad.gif"
    bad_gif.write_bytes(b"GIF89a broken")
    with pytest.raises(ValueError, match=r"cannot read '.*bad.gif' as a video"):
        read_video(bad_gif)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    with pytest.raises(ValueError, match=r"cannot read '.*empty' as a video: it has zero frames"):
        read_video(empty)
    clip = write_video(tmp_path / "short.gif", video[:3], fps=10)
    with pytest.raises(ValueError, match="zero frames from frame 5 on"):
        read_video(clip, start_frame=5)
    audio_only = tmp_path / "audio.mp4"
    _write_audio_only(audio_only)
    with pytest.raises(ValueError, match="no video stream"):
        read_video(audio_only)
    with pytest.raises(ValueError, match="write_video: argument 'video' must have shape"):
        write_video(tmp_path / "x.mp4", video[0])
    with pytest.raises(ValueError, match="write_video: argument 'video' must have shape"):
        write_video(tmp_path / "x.mp4", video[:0])
    with pytest.raises(ValueError, match="unsupported output"):
        write_video(tmp_path / "x.xyz", video)
    with pytest.raises(ValueError, match="'fps' must be a positive number"):
        write_video(tmp_path / "x.mp4", video, fps=0)
    assert not _leftovers(tmp_path)


def _write_audio_only(path: Path) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_masks_from_images_videos_and_folders(tmp_path: Path) -> None:
    from vision_kernels.patchnn import write_mask

    image_mask = torch.zeros(32, 40, dtype=torch.bool)
    image_mask[5:15, 6:20] = True
    path = write_mask(tmp_path / "hole.png", image_mask)
    assert torch.equal(read_video_mask(path), image_mask[None])
    assert torch.equal(read_video_mask(path, SHAPE), image_mask.expand(SHAPE))
    assert read_video_mask(path, (8, 16, 20)).shape == (8, 16, 20)
    frames = torch.zeros(*SHAPE, 1)
    frames[2:4, 10:20, 10:20] = 1
    folder = write_video(tmp_path / "mask_frames", frames)
    assert torch.equal(read_video_mask(folder, SHAPE), frames[..., 0] > 0.5)
    with pytest.raises(ValueError, match="mask .* has 8 frames, the video 5"):
        read_video_mask(folder, (5, 32, 40))


def test_frame_strip(tmp_path: Path, video) -> None:
    from vision_kernels.patchnn import read_image

    strip = read_image(write_frame_strip(tmp_path / "strip.png", video, count=4, gap=2))
    assert strip.shape == (32, 4 * 40 + 3 * 2, 3)


def test_cli_generate_retarget_inpaint_analogy(tmp_path: Path, video, capsys) -> None:
    source = write_video(tmp_path / "in.gif", video, fps=10)
    fast = ["--patch-size", "3", "5", "5", "--coarsest", "12", "--iterations", "1", "--quiet"]
    assert (
        cli_main(
            ["vgpnn", "generate", str(source), "-o", str(tmp_path / "g.mp4"), "--count", "2", "--frames", "10", *fast]
        )
        == 0
    )
    for name in ("g_0.mp4", "g_1.mp4"):
        out, fps = read_video(tmp_path / name)
        assert out.shape == (10, 32, 40, 3) and abs(fps - 10) < 1e-6
    assert (
        cli_main(
            [
                "vgpnn",
                "retarget",
                str(source),
                "-o",
                str(tmp_path / "r"),
                "--size",
                "32",
                "56",
                "--fps",
                "7",
                *fast[:-1],
            ]
        )
        == 0
    )
    assert read_video(tmp_path / "r")[0].shape == (8, 32, 56, 3)
    assert "vision-kernels vgpnn: patch search exact:" in capsys.readouterr().err  # the search choice is logged
    mask = torch.zeros(32, 40, 1)
    mask[8:16, 10:22] = 1
    from vision_kernels.patchnn import write_image

    write_image(tmp_path / "mask.png", mask)
    assert (
        cli_main(["vgpnn", "inpaint", str(source), str(tmp_path / "mask.png"), "-o", str(tmp_path / "i.gif"), *fast])
        == 0
    )
    inpainted, _ = read_video(tmp_path / "i.gif")
    known = (mask[..., 0] < 0.5).expand(SHAPE)
    original, _ = read_video(source)
    assert _psnr(inpainted[known], original[known]) > 25  # GIF re-quantization only
    motion = tmp_path / "m.npy"
    np.save(motion, np.random.default_rng(0).random(SHAPE).astype(np.float32))
    assert (
        cli_main(
            [
                "vgpnn",
                "analogy",
                str(source),
                str(source),
                "-o",
                str(tmp_path / "a.mp4"),
                "--motion-layout",
                str(motion),
                "--motion-appearance",
                str(motion),
                *fast,
            ]
        )
        == 0
    )
    assert read_video(tmp_path / "a.mp4")[0].shape == (*SHAPE, 3)
    assert "wrote" in capsys.readouterr().out


def test_cli_reports_bad_input_without_leaving_outputs(tmp_path: Path, video, capsys) -> None:
    garbage = tmp_path / "bad.mp4"
    garbage.write_bytes(b"nope" * 100)
    out = tmp_path / "o.mp4"
    assert cli_main(["vgpnn", "generate", str(garbage), "-o", str(out), "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err and not out.exists()
    source = write_video(tmp_path / "in", video)
    assert cli_main(["vgpnn", "generate", str(source), "-o", str(out), "--frames", "2", "--quiet"]) == 2
    assert "below the coarsest pyramid level" in capsys.readouterr().err and not out.exists()
    assert cli_main(["vgpnn", "retarget", str(source), "-o", str(out), "--quiet"]) == 2
    assert "give --frames and/or --size" in capsys.readouterr().err
    write_video(tmp_path / "mask", torch.ones(3, 32, 40, 1))
    assert cli_main(["vgpnn", "inpaint", str(source), str(tmp_path / "mask"), "-o", str(out), "--quiet"]) == 2
    assert "has 3 frames, the video 8" in capsys.readouterr().err
    assert not out.exists() and not _leftovers(tmp_path)
