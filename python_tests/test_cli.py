"""The command-line conventions (vision_kernels._cli, vision_kernels.cli): one line, exit 2/1, --debug."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vision_kernels import _cli
from vision_kernels.cli import command_modules, main


def test_unknown_demo_section_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--section", "nonexistent", "--no-bench"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--section: unknown section 'nonexistent'" in err[0] and "Traceback" not in err[0]


def test_demo_out_that_is_a_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(target)])
    assert exit_info.value.code == 2
    assert "expected a folder, got the file" in capsys.readouterr().err


def test_run_handler_statuses_and_debug(capsys: pytest.CaptureFixture[str]) -> None:
    def usage(_: argparse.Namespace) -> int:
        raise ValueError("f: argument x must be > 0, got -1")

    def failed(_: argparse.Namespace) -> int:
        raise RuntimeError("disk\nfull")

    def interrupted(_: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    plain = argparse.Namespace(debug=False)
    assert _cli.run_handler(usage, plain, "vk x") == 2
    assert capsys.readouterr().err == "vk x: error: f: argument x must be > 0, got -1\n"
    assert _cli.run_handler(failed, plain, "vk x") == 1
    assert capsys.readouterr().err == "vk x: failed: RuntimeError: disk full (rerun with --debug for the traceback)\n"
    assert _cli.run_handler(interrupted, plain, "vk x") == 130
    capsys.readouterr()
    assert _cli.run_handler(failed, argparse.Namespace(debug=True), "vk x") == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (_cli.positive_int, "0", "positive integer"),
        (_cli.positive_int, "1.5", "positive integer"),
        (_cli.nonnegative_int, "-1", ">= 0"),
        (_cli.positive_float, "nan", "finite number > 0"),
        (_cli.positive_float, "-1", "finite number > 0"),
        (_cli.finite_float, "inf", "finite"),
        (_cli.fraction, "1.5", "[0, 1]"),
        (_cli.existing_file, "/nonexistent/x.png", "no such file"),
        (_cli.existing_folder, "/nonexistent", "no such folder"),
        (_cli.output_file([".png"]), "out.gif", "ending in .png"),
        (_cli.output_file([".png"]), "/nonexistent/out.png", "does not exist"),
    ],
)
def test_validators_reject(parse, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(text)


def test_validators_accept(tmp_path: Path) -> None:
    assert _cli.positive_int("3") == 3 and _cli.nonnegative_int("0") == 0 and _cli.fraction("0.5") == 0.5
    assert _cli.output_file([".png", ".jpg"])(str(tmp_path / "a.JPG")) == tmp_path / "a.JPG"
    assert _cli.output_folder(str(tmp_path / "new")) == tmp_path / "new"


def test_command_modules_are_discovered() -> None:
    modules = command_modules()
    assert "vision_kernels.patchnn.cli" in modules and "vision_kernels.patchnn.video_cli" in modules
    assert "vision_kernels.bench.cli" not in modules
