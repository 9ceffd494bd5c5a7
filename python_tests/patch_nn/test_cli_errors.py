"""Every mistake on the ``gpnn`` / ``vgpnn`` command lines: one line naming the argument, exit 2, no
traceback, nothing written, and no work done first (issue 16 item 5 and its neighbours)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_kernels.cli import main
from vision_kernels.patchnn import write_image, write_mask, write_video

H, W = 24, 32


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_errors")
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(H, W, 3, generator=generator)
    hole = torch.zeros(H, W, dtype=torch.bool)
    hole[8:14, 10:18] = True
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    text = root / "notes.png"
    text.write_text("not an image at all")
    bad_video = root / "corrupt.mp4"
    bad_video.write_bytes(b"\x00\x01 not a video" * 40)
    bad_npy = root / "bad.npy"
    bad_npy.write_bytes(b"not numpy")
    folder = root / "folder"
    folder.mkdir()
    empty = root / "empty"
    empty.mkdir()
    (root / "out").mkdir()
    (empty / "readme.txt").write_text("no images")
    motion = root / "motion.npy"
    np.save(motion, np.zeros((6, H, W), dtype=np.float32))
    return {
        "image": write_image(root / "image.png", image),
        "small": write_image(root / "small.png", image[:10, :10]),
        "mask": write_mask(root / "mask.png", hole),
        "black": write_mask(root / "black.png", torch.zeros(H, W, dtype=torch.bool)),
        "white": write_mask(root / "white.png", torch.ones(H, W, dtype=torch.bool)),
        "corrupt": corrupt,
        "text": text,
        "video": write_video(root / "video.gif", torch.rand(6, H, W, 3, generator=generator), fps=10),
        "bad_video": bad_video,
        "bad_npy": bad_npy,
        "motion": motion,
        "folder": folder,
        "empty": empty,
        "missing": root / "missing.png",
        "out_dir": root / "out",
    }


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit status and stderr of ``vision-kernels argv`` (argparse's SystemExit included)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    return code, capsys.readouterr().err


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err  # one line, no usage block, no traceback
    assert "Traceback" not in err and "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------ gpnn

GPNN_COMMANDS = {
    "generate": ["{image}"],
    "retarget": ["{image}", "--size", "20", "28"],
    "analogy": ["{image}", "{image}"],
    "inpaint": ["{image}", "{mask}"],
    "collage": ["{image}", "{image}"],
    "edit": ["{image}", "{image}"],
}


def gpnn_argv(files: dict[str, Path], command: str, output: str | None = None, *extra: str, first: str = "image"):
    words = [w.format(**{k: str(v) for k, v in files.items()}) for w in GPNN_COMMANDS[command]]
    words[0] = str(files[first])
    return ["gpnn", command, *words, "-o", output or str(files["out_dir"] / "x.png"), *extra]


SETTING_MISTAKES = [
    (["--patch-size", "0"], "--patch-size", "positive integer"),
    (["--patch-size", "x"], "--patch-size", "positive integer"),
    (["--ratio", "nan"], "--ratio", "> 1"),
    (["--ratio", "1"], "--ratio", "> 1"),
    (["--alpha", "-1"], "--alpha", "> 0"),
    (["--alpha", "0"], "--alpha", "> 0"),
    (["--alpha", "inf"], "--alpha", "finite"),
    (["--coarsest", "0"], "--coarsest", "positive integer"),
    (["--iterations", "0"], "--iterations", "positive integer"),
    (["--noise", "-1"], "--noise", ">= 0"),
    (["--pm-iterations", "0"], "--pm-iterations", "positive integer"),
    (["--max-side", "0"], "--max-side", "positive integer"),
    (["--seed", "-1"], "--seed", "[0, 2**63)"),
    (["--seed", "1.5"], "--seed", "[0, 2**63)"),
    (["--search", "nope"], "--search", "invalid choice"),
    (["--initial-guess", "zeros"], "--initial-guess", "invalid choice"),
    (["--alpha", "0.1", "--no-alpha"], "--no-alpha", "not both"),
]


@pytest.mark.parametrize("command", list(GPNN_COMMANDS))
@pytest.mark.parametrize(("extra", "argument", "message"), SETTING_MISTAKES)
def test_gpnn_bad_settings(files, capsys, command: str, extra: list[str], argument: str, message: str) -> None:
    out = files["out_dir"].parent / f"{command}.png"
    code, err = run_cli(gpnn_argv(files, command, str(out), *extra), capsys)
    assert_usage_error(code, err, argument, message)
    assert not out.exists()


@pytest.mark.parametrize("command", list(GPNN_COMMANDS))
@pytest.mark.parametrize(
    ("first", "needles"),
    [
        ("missing", ["no such file", "missing.png"]),
        ("corrupt", ["cannot read", "corrupt.png", "as an image"]),
        ("text", ["cannot read", "notes.png"]),
    ],
)
def test_gpnn_bad_inputs(files, capsys, command: str, first: str, needles: list[str]) -> None:
    out = files["out_dir"].parent / f"in_{command}.png"
    code, err = run_cli(gpnn_argv(files, command, str(out), first=first), capsys)
    assert_usage_error(code, err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("command", ["analogy", "inpaint", "collage", "edit"])
def test_gpnn_folder_where_a_file_is_expected(files, capsys, command: str) -> None:
    code, err = run_cli(gpnn_argv(files, command, first="folder"), capsys)
    assert_usage_error(code, err, "expected a file, got the folder")


@pytest.mark.parametrize("command", ["generate", "retarget"])
def test_gpnn_batch_input_without_images(files, capsys, command: str) -> None:
    code, err = run_cli(gpnn_argv(files, command, str(files["out_dir"]), first="empty"), capsys)
    assert_usage_error(code, err, "INPUT", "holds no input files")
    code, err = run_cli(
        ["gpnn", command, str(files["image"].parent / "*.nothing"), "-o", "o", "--size", "9", "9"], capsys
    )
    assert_usage_error(code, err, "INPUT", "matches no input file")


@pytest.mark.parametrize("command", list(GPNN_COMMANDS))
@pytest.mark.parametrize(
    ("output", "needles"),
    [
        ("{root}/out.xyz", ["-o/--output", "ending in .png"]),
        ("{root}/out.gif", ["-o/--output", "ending in .png"]),
        ("{root}/no/such/folder/out.png", ["-o/--output", "does not exist"]),
    ],
)
def test_gpnn_bad_outputs(files, capsys, command: str, output: str, needles: list[str]) -> None:
    path = output.format(root=files["image"].parent)
    code, err = run_cli(gpnn_argv(files, command, path), capsys)
    assert_usage_error(code, err, *needles)
    assert not Path(path).exists()


@pytest.mark.parametrize("command", list(GPNN_COMMANDS))
def test_gpnn_unwritable_output_folder(files, capsys, monkeypatch, command: str) -> None:
    # Tests may run as root, for whom permission bits do not apply: refuse writing the way os.access would.
    locked = files["image"].parent / "locked"
    locked.mkdir(exist_ok=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    code, err = run_cli(gpnn_argv(files, command, str(locked / "out.png")), capsys)
    assert_usage_error(code, err, "-o/--output", "permission denied")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["generate", "{image}", "--count", "0"], ["--count", "positive integer"]),
        (["generate", "{image}", "--count", "-3"], ["--count", "positive integer"]),
        (["generate", "{image}", "--size", "0", "0"], ["--size", "positive integer"]),
        (["retarget", "{image}", "--size", "-5", "10"], ["--size", "positive integer"]),
        (["collage", "{image}", "{image}", "--size", "0", "0"], ["--size", "positive integer"]),
        (["inpaint", "{image}", "{black}"], ["MASK", "marks no pixel"]),
        (["inpaint", "{image}", "{white}"], ["MASK", "marks every pixel"]),
        (["edit", "{image}", "{small}"], ["EDITED", "10x10", "must keep the source's size"]),
        (["generate", "{image}", "--search", "faiss"], ["alpha=None"]),
        (["generate", "{image}", "{small}", "-o", "{root}/two.png"], ["-o/--output", "need an output folder"]),
        (["generate", "{image}", "--format", "jpg"], ["--format", "output folder"]),
        (["generate", "{image}", "{image}", "-o", "{root}/dup"], ["INPUT", "given twice"]),
    ],
)
def test_gpnn_command_specific_mistakes(files, capsys, argv: list[str], needles: list[str]) -> None:
    names = {k: str(v) for k, v in files.items()} | {"root": str(files["image"].parent)}
    words = [w.format(**names) for w in argv]
    if "-o" not in words:
        words += ["-o", str(files["image"].parent / "specific.png")]
    code, err = run_cli(["gpnn", *words, "--quiet"], capsys)
    assert_usage_error(code, err, *needles)
    assert not (files["image"].parent / "specific.png").exists()


def test_gpnn_debug_shows_the_traceback(files, capsys) -> None:
    code, err = run_cli(["--debug", *gpnn_argv(files, "generate", first="corrupt")], capsys)
    assert code == 2 and "Traceback" in err


# ------------------------------------------------------------------ vgpnn

VGPNN_COMMANDS = {
    "generate": ["{video}"],
    "retarget": ["{video}", "--frames", "5"],
    "analogy": ["{video}", "{video}"],
    "inpaint": ["{video}", "{mask}"],
}


def vgpnn_argv(files: dict[str, Path], command: str, output: str | None = None, *extra: str, first: str = "video"):
    words = [w.format(**{k: str(v) for k, v in files.items()}) for w in VGPNN_COMMANDS[command]]
    words[0] = str(files[first])
    return ["vgpnn", command, *words, "-o", output or str(files["out_dir"] / "x.mp4"), "--quiet", *extra]


VIDEO_SETTING_MISTAKES = [
    (["--fps", "0"], "--fps", "> 0"),
    (["--fps", "-2"], "--fps", "> 0"),
    (["--fps", "nan"], "--fps", "> 0"),
    (["--patch-size", "0", "5", "5"], "--patch-size", "positive integer"),
    (["--patch-size", "3", "5"], "--patch-size", "expected 3 arguments"),
    (["--ratio", "nan"], "--ratio", "> 1"),
    (["--temporal-ratio", "0.5"], "--temporal-ratio", ">= 1"),
    (["--alpha", "-1"], "--alpha", "> 0"),
    (["--coarsest", "0"], "--coarsest", "positive integer"),
    (["--coarsest-frames", "0"], "--coarsest-frames", "positive integer"),
    (["--iterations", "-1"], "--iterations", "positive integer"),
    (["--noise", "nan"], "--noise", ">= 0"),
    (["--initial-guess", "zeros"], "--initial-guess", "invalid choice"),
    (["--max-frames", "0"], "--max-frames", "positive integer"),
    (["--start-frame", "-1"], "--start-frame", ">= 0"),
    (["--max-side", "0"], "--max-side", "positive integer"),
    (["--seed", "-1"], "--seed", "[0, 2**63)"),
]


@pytest.mark.parametrize("command", list(VGPNN_COMMANDS))
@pytest.mark.parametrize(("extra", "argument", "message"), VIDEO_SETTING_MISTAKES)
def test_vgpnn_bad_settings(files, capsys, command: str, extra: list[str], argument: str, message: str) -> None:
    out = files["out_dir"].parent / f"v_{command}.mp4"
    code, err = run_cli(vgpnn_argv(files, command, str(out), *extra), capsys)
    assert_usage_error(code, err, argument, message)
    assert not out.exists()


@pytest.mark.parametrize("command", list(VGPNN_COMMANDS))
@pytest.mark.parametrize(
    ("first", "needles"),
    [
        ("missing", ["no such file or folder", "missing.png"]),
        ("bad_video", ["cannot read", "corrupt.mp4", "as a video"]),
        ("image", ["image.png", "single image, not a video"]),
    ],
)
def test_vgpnn_bad_inputs(files, capsys, command: str, first: str, needles: list[str]) -> None:
    out = files["out_dir"].parent / f"vin_{command}.mp4"
    code, err = run_cli(vgpnn_argv(files, command, str(out), first=first), capsys)
    assert_usage_error(code, err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("command", list(VGPNN_COMMANDS))
@pytest.mark.parametrize(
    ("output", "needles"),
    [
        ("{root}/out.xyz", ["-o/--output", "ending in .mp4"]),
        ("{root}/out.png", ["-o/--output", "ending in .mp4"]),
        ("{root}/no/such/folder/out.mp4", ["-o/--output", "does not exist"]),
    ],
)
def test_vgpnn_bad_outputs(files, capsys, command: str, output: str, needles: list[str]) -> None:
    path = output.format(root=files["image"].parent)
    code, err = run_cli(vgpnn_argv(files, command, path), capsys)
    assert_usage_error(code, err, *needles)
    assert not Path(path).exists()


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["generate", "{video}", "--count", "0"], ["--count", "positive integer"]),
        (["generate", "{video}", "--frames", "0"], ["--frames", "positive integer"]),
        (["generate", "{video}", "--size", "0", "0"], ["--size", "positive integer"]),
        (["generate", "{video}", "--frames", "2"], ["below the coarsest pyramid level"]),
        (["retarget", "{video}"], ["--frames/--size", "give --frames and/or --size"]),
        (["inpaint", "{video}", "{black}"], ["MASK", "marks no voxel"]),
        (["inpaint", "{video}", "{white}"], ["MASK", "marks every voxel"]),
        (["analogy", "{video}", "{video}", "--motion-layout", "{motion}"], ["--motion-layout/--motion-appearance"]),
        (
            ["analogy", "{video}", "{video}", "--motion-layout", "{bad_npy}", "--motion-appearance", "{motion}"],
            ["--motion-layout", "bad.npy"],
        ),
        (["analogy", "{video}", "{video}", "--motion-weight", "-1"], ["--motion-weight", ">= 0"]),
        (["generate", "{video}", "--format", "gif"], ["--format", "batch mode"]),
        (["generate", "{video}", "{video}"], ["INPUT", "given twice"]),
    ],
)
def test_vgpnn_command_specific_mistakes(files, capsys, argv: list[str], needles: list[str]) -> None:
    names = {k: str(v) for k, v in files.items()}
    out = files["image"].parent / "vspecific.mp4"
    code, err = run_cli(["vgpnn", *[w.format(**names) for w in argv], "-o", str(out), "--quiet"], capsys)
    assert_usage_error(code, err, *needles)
    assert not out.exists()
