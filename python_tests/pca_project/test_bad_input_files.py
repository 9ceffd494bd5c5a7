"""Bad input to weightspace files, fits and the ``w2w`` commands: one clear error, files never lost.

Issue 16: raw safetensors errors from WeightSpace.load, numpy's "EOF: reading magic string" from
fit_streaming on an empty file, non-atomic MatrixWriter / write_matrix / WeightSpace.save, the
misleading "basis must be finite" for a constant weight matrix, bare ModuleNotFoundError for
diffusers/peft; and their neighbours.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_kernels._files import clean_stale_temporaries, file_sha256, is_temporary_name
from vision_kernels.cli import main
from vision_kernels.weightspace import (
    FileRows,
    MatrixWriter,
    WeightSpace,
    collect_adapters,
    fit_exact,
    fit_streaming,
    read_attributes,
)


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def small_space(planted) -> WeightSpace:
    return fit_exact(planted.weights, 4, layout=planted.layout)


def _one_line_error(capsys) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "Traceback" not in error
    return error


# ---------------------------------------------------------------- weight matrix files


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_fit_on_an_empty_or_garbage_file(tmp_path, suffix) -> None:
    path = tmp_path / f"w{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        fit_streaming(path, 2)
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(ValueError, match=r"is not a (safetensors|\.npy) file"):
        fit_streaming(path, 2)
    path.write_bytes(os.urandom(64) if suffix == ".npy" else struct.pack("<Q", 12) + b"{not json!!}")
    with pytest.raises(ValueError, match=r"is not a (safetensors|\.npy) file"):
        FileRows(path)


def test_safetensors_header_that_lies_about_sizes(tmp_path) -> None:
    header = json.dumps({"weights": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(48))
    with pytest.raises(ValueError, match=r"needs 48 bytes, its data_offsets span 8"):
        FileRows(path)
    header = json.dumps({"weights": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 48]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(20))
    with pytest.raises(ValueError, match=r"is truncated"):
        FileRows(path)
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ValueError, match=r"is not a safetensors file \(header size 1000000\)"):
        FileRows(path)


def test_npy_side_metadata_must_be_json(tmp_path) -> None:
    np.save(tmp_path / "m.npy", np.zeros((3, 2), np.float32))
    (tmp_path / "m.npy.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"metadata file .*m\.npy\.json is not valid JSON"):
        FileRows(tmp_path / "m.npy")


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_matrix_writer_keeps_the_previous_matrix_on_error(tmp_path, suffix) -> None:
    path = tmp_path / f"m{suffix}"
    with MatrixWriter(path, 2, 3) as writer:
        writer.append(torch.ones(2, 3))
    before = file_sha256(path)
    with pytest.raises(RuntimeError, match="boom"), MatrixWriter(path, 2, 3) as writer:
        writer.append(torch.zeros(1, 3))
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match=r"got 1 rows, 2 declared"), MatrixWriter(path, 2, 3) as writer:
        writer.append(torch.zeros(1, 3))
    assert file_sha256(path) == before
    assert torch.equal(FileRows(path).read(0, 2), torch.ones(2, 3))
    assert [p.name for p in tmp_path.iterdir() if is_temporary_name(p.name)] == []


_KILLED_MATRIX_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from vision_kernels.weightspace import MatrixWriter
    with MatrixWriter(sys.argv[1], 1000, 64) as writer:
        writer.append(torch.full((10, 64), 7.0))
        writer._handle.flush()
        print("writing", flush=True)
        time.sleep(60)
    """
)

_KILLED_SPACE_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    import safetensors.torch
    from vision_kernels.weightspace import WeightSpace
    space = WeightSpace.load(sys.argv[1])
    real = safetensors.torch.save_file
    def slow_save(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        print("writing", flush=True)   # the new file is complete under its temporary name
        time.sleep(60)
    safetensors.torch.save_file = slow_save
    space.save(sys.argv[1])
    """
)


def _kill_while_writing(script: str, target: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        assert process.stdout.readline().strip() == "writing"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_sigkill_during_matrix_write_keeps_the_previous_matrix(tmp_path, suffix) -> None:
    path = tmp_path / f"weights{suffix}"
    with MatrixWriter(path, 3, 64) as writer:
        writer.append(torch.ones(3, 64))
    before = file_sha256(path)
    _kill_while_writing(_KILLED_MATRIX_WRITER, path)
    assert file_sha256(path) == before
    assert torch.equal(FileRows(path).read(0, 3), torch.ones(3, 64))
    leftovers = [p for p in tmp_path.iterdir() if is_temporary_name(p.name)]
    assert len(leftovers) == 1  # the killed writer's partial matrix, never under the final name
    time.sleep(0.05)
    with MatrixWriter(path, 1, 64) as writer:  # the next save cleans it
        writer.append(torch.zeros(64))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_write_matrix_over_an_existing_matrix_is_atomic(tmp_path, planted_folder) -> None:
    from vision_kernels.weightspace import LoraDataset

    dataset = LoraDataset.from_folder(planted_folder)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"previous")
    dataset.write_matrix(path)
    assert FileRows(path).shape == dataset.shape
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]


def test_sigkill_during_space_save_keeps_the_previous_space(tmp_path, small_space) -> None:
    path = small_space.save(tmp_path / "space.safetensors")
    before = file_sha256(path)
    _kill_while_writing(_KILLED_SPACE_SAVE, path)
    assert file_sha256(path) == before
    WeightSpace.load(path)
    assert len([p for p in tmp_path.iterdir() if is_temporary_name(p.name)]) == 1
    time.sleep(0.05)
    small_space.save(path)  # the next save removes the killed save's hidden temporary
    assert [p.name for p in tmp_path.iterdir()] == ["space.safetensors"]
    assert clean_stale_temporaries(tmp_path) == []


# ---------------------------------------------------------------- WeightSpace.load


def _resave(path: Path, edit) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t, m: t.pop("basis"), r"field 'basis' is missing"),
        (lambda t, m: t.update(std=t["std"][:-1]), r"field 'std' must have shape \[\d+\]"),
        (
            lambda t, m: t.update(singular_values=t["singular_values"][:2]),
            r"field 'singular_values' must have shape \[4\]",
        ),
        (lambda t, m: m.update(n_models="81"), r"field 'coefficients' must have shape \[81, 4\]"),
        (lambda t, m: m.update(n_models="eighty"), r"field 'n_models/total_variance' must be numbers"),
        (lambda t, m: m.pop("total_variance"), r"field 'total_variance' is missing from the metadata"),
        (lambda t, m: m.update(total_variance="nan"), r"field 'total_variance' must be a finite number > 0"),
        (lambda t, m: t.update(mean=t["mean"].long()), r"field 'mean' must be a floating-point tensor"),
        (lambda t, m: t.update(extra=torch.zeros(1)), r"field 'extra' is not a weight-space tensor"),
        (lambda t, m: m.update(layout="{]"), r"field 'layout' is damaged"),
        (lambda t, m: m.update(names='["a"]'), r"field 'names' must be a list of 80 names"),
        (lambda t, m: t.update(std=torch.zeros_like(t["std"])), r"argument 'std' must be > 0 everywhere"),
        (lambda t, m: t.update(**{"attribute.x": torch.zeros(3, dtype=torch.float64)}), r"field 'attribute.x'"),
    ],
)
def test_load_checks_every_field(tmp_path, small_space, edit, message) -> None:
    path = small_space.save(tmp_path / "space.safetensors")
    _resave(path, edit)
    with pytest.raises(ValueError, match=r"WeightSpace.load: '.*space.safetensors'.*" + message):
        WeightSpace.load(path)


def test_load_of_damaged_or_foreign_files(tmp_path, small_space) -> None:
    path = small_space.save(tmp_path / "space.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"WeightSpace.load: '.*' is not a readable safetensors file"):
        WeightSpace.load(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not a readable safetensors file"):
        WeightSpace.load(path)
    with pytest.raises(FileNotFoundError, match=r"no weight space file .*nowhere"):
        WeightSpace.load(tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match=r"\(it is a folder\)"):
        WeightSpace.load(tmp_path)
    with pytest.raises(ValueError, match=r"argument 'path' must end in \.safetensors"):
        small_space.save(tmp_path / "space.pt")


# ---------------------------------------------------------------- fits


def test_constant_weights_say_zero_variance() -> None:
    constant = torch.full((6, 20), 0.25)
    for fit in (fit_streaming, fit_exact):
        with pytest.raises(ValueError, match=r"the weights have zero variance: all 6 models have the same weights"):
            fit(constant, 2)


def test_duplicated_models_say_how_many_components_exist() -> None:
    rows = torch.randn(3, 30).repeat(4, 1)  # 12 models, 3 distinct: centered rank 2
    with pytest.raises(ValueError, match=r"span only 2 dimension\(s\).*ask for at most 2 component"):
        fit_exact(rows, 5)
    space = fit_exact(rows, 2)
    assert torch.isfinite(space.basis).all()


# ---------------------------------------------------------------- optional dependencies


def test_missing_diffusers_or_peft_names_the_extra(monkeypatch, planted) -> None:
    from vision_kernels._optional import MissingDependencyError
    from vision_kernels.weightspace import lora_config, tiny_unet

    monkeypatch.setitem(sys.modules, "diffusers", None)
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(
        MissingDependencyError, match=r"tiny_unet needs diffusers.*pip install 'vision-kernels\[diffusion\]'"
    ):
        tiny_unet()
    with pytest.raises(MissingDependencyError, match=r"lora_config needs peft.*vision-kernels\[diffusion\]"):
        lora_config(planted.layout)


# ---------------------------------------------------------------- attributes and collect


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,a\nm1,yes\n", r"line 2, column 'a': expected a number, got 'yes'"),
        ("name,a\nm1,1\nm1,0\n", r"line 3: model 'm1' appears twice"),
        ("name,a\nm1,1,2\n", r"line 2: 3 fields, the header has 2"),
        ("name\nm1\n", r"the header must name one model column and distinct attribute columns"),
        ("name,a\n", r"needs a header row and at least one model row"),
        ("name,a\nm1,inf\n", r"infinite value"),
    ],
)
def test_bad_attribute_files(tmp_path, text, message) -> None:
    path = tmp_path / "a.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_attributes(path)


def test_collect_bad_arguments(tmp_path, planted_folder) -> None:
    with pytest.raises(FileNotFoundError, match=r"argument 'adapters'.*does not exist"):
        collect_adapters(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match=r"holds no adapter folders or files"):
        collect_adapters(tmp_path / "none", tmp_path / "out")
    with pytest.raises(ValueError, match=r"argument 'dtype' must be one of"):
        collect_adapters(planted_folder, tmp_path / "out", dtype="int8")
    (tmp_path / "junk" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no adapter could be read to fix the layout"):
        collect_adapters(tmp_path / "junk", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fit_of_an_unfinished_run_says_so(tmp_path, planted_folder) -> None:
    out = tmp_path / "run"
    collect_adapters(planted_folder, out, shard_size=40, show_progress=False)
    (out / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"unfinished: rerun its command to resume it"):
        fit_streaming(out, 2)


# ---------------------------------------------------------------- the command line


def test_cli_argument_mistakes_exit_2_while_parsing(tmp_path, small_space, capsys) -> None:
    space = small_space.save(tmp_path / "space.safetensors")
    cases = [
        (["w2w", "fit", tmp_path / "nowhere", "--components", 3, "--out", tmp_path / "s.safetensors"], "no such file"),
        (["w2w", "fit", space, "--components", 0, "--out", tmp_path / "s.safetensors"], "expected a positive integer"),
        (["w2w", "fit", space, "--components", 3, "--out", tmp_path / "s.pt"], "ending in .safetensors"),
        (["w2w", "fit", space, "--components", 3, "--out", tmp_path / "no" / "s.safetensors"], "does not exist"),
        (
            ["w2w", "sample", "--space", tmp_path / "x.safetensors", "--count", 2, "--out", tmp_path / "o"],
            "no such file",
        ),
        (["w2w", "sample", "--space", space, "--count", 0, "--out", tmp_path / "o"], "expected a positive integer"),
        (["w2w", "sample", "--space", space, "--count", 2, "--seed", -1, "--out", tmp_path / "o"], "integer >= 0"),
        (["w2w", "sample", "--space", space, "--count", 2, "--scale", "nan", "--out", tmp_path / "o"], "finite number"),
        (
            [
                "w2w",
                "edit",
                "--space",
                space,
                "--adapter",
                tmp_path,
                "--attribute",
                "a",
                "--strength",
                "inf",
                "--out",
                tmp_path / "e",
            ],
            "finite number",
        ),  # fmt: skip
        (["w2w", "project", "--space", space, "--adapter", tmp_path, "--out", tmp_path / "c.txt"], "ending in .json"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_cli(*argv)
        assert exit_info.value.code == 2, argv
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, (argv, error)
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


def test_cli_mistakes_found_by_the_command_are_one_line(tmp_path, small_space, capsys, planted_folder) -> None:
    space = small_space.save(tmp_path / "space.safetensors")
    (tmp_path / "image.png").write_bytes(b"not really")
    cases = [
        (
            [
                "w2w",
                "edit",
                "--space",
                space,
                "--adapter",
                planted_folder / "model1",
                "--attribute",
                "a",
                "--strength",
                1,
                "--out",
                tmp_path / "e",
            ],
            "the space holds no attributes",
        ),  # fmt: skip
        (
            ["w2w", "fit", planted_folder, "--components", 3, "--out", tmp_path / "s.safetensors"],
            "has no manifest.json",
        ),  # fmt: skip
        (["w2w", "fit", space, "--components", 3, "--out", tmp_path / "s.safetensors"], "pass name="),
        (
            ["w2w", "project", "--space", space, "--adapter", planted_folder / "model1", "--components", 9],
            "n_components",
        ),  # fmt: skip
        (
            [
                "w2w",
                "project",
                "--space",
                planted_folder / "model0" / "unet" / "adapter_model.safetensors",
                "--adapter",
                planted_folder / "model1",
            ],
            "is not a saved weight space",
        ),  # fmt: skip
        (
            [
                "w2w",
                "invert",
                "--space",
                space,
                "--image",
                tmp_path / "image.png",
                "--base-model",
                tmp_path,
                "--out",
                tmp_path / "i",
            ],
            "holds neither a diffusers pipeline",
        ),  # fmt: skip
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert run_cli(*argv) == 2, argv
        error = _one_line_error(capsys)
        assert message in error, (argv, error)
    assert not (tmp_path / "e").exists() and not (tmp_path / "i").exists()
    assert not (tmp_path / "s.safetensors").exists()


def test_edit_output_never_replaces_a_foreign_folder(tmp_path, capsys, planted_folder) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"x")
    from vision_kernels.weightspace import edit_adapter

    with pytest.raises(FileExistsError, match=r"non-empty folder that holds no adapter"):
        edit_adapter(tmp_path / "space.safetensors", planted_folder / "model1", "a", 1.0, folder)
    assert (folder / "holiday.jpg").exists()
