"""``vision-kernels w2w ...`` end to end: collect (skips, resume), fit, sample, edit, project, invert."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from vision_kernels.cli import main
from vision_kernels.weightspace import (
    WeightSpace,
    fit_exact,
    open_run_rows,
    read_adapter,
    write_adapter,
)


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, planted_folder, planted, layout_factory) -> Path:
    """The 80 planted adapters plus five bad entries: damaged file, empty folder, another rank,
    NaN weights, and a stray text file (ignored: not a folder or .safetensors)."""
    root = tmp_path_factory.mktemp("w2w_adapters") / "adapters"
    shutil.copytree(planted_folder, root)
    (root / "broken").mkdir()
    (root / "broken" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    (root / "empty").mkdir()
    other = layout_factory(rank=3)
    write_adapter(root / "rank3", torch.randn(other.dim) * 0.01, other)
    from safetensors.torch import load_file, save_file

    write_adapter(root / "model_nan", planted.weights[0], planted.layout)
    weights_file = root / "model_nan" / "adapter_model.safetensors"
    tensors = load_file(weights_file)
    next(iter(tensors.values()))[0, 0] = float("nan")
    save_file(tensors, weights_file, metadata={"format": "pt"})
    (root / "notes.txt").write_text("not an adapter")
    return root


@pytest.fixture(scope="module")
def attributes(tmp_path_factory, planted) -> Path:
    """attr0: sign of the first planted coefficient (0/1); attr1: the second coefficient; model5 unknown."""
    path = tmp_path_factory.mktemp("w2w_csv") / "attributes.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "attr0", "attr1"])
        for index in range(len(planted.weights)):
            c = planted.coefficients[index]
            writer.writerow([f"model{index}", "" if index == 5 else int(c[0] > 0), f"{float(c[1]):.6f}"])
    return path


@pytest.fixture(scope="module")
def collected(tmp_path_factory, adapters, attributes) -> Path:
    out = tmp_path_factory.mktemp("w2w_run") / "weights"
    assert (
        run_cli("w2w", "collect", adapters, "--out", out, "--attributes", attributes, "--shard-size", 16, "--quiet")
        == 0
    )
    return out


@pytest.fixture(scope="module")
def space_file(tmp_path_factory, collected) -> Path:
    out = tmp_path_factory.mktemp("w2w_space") / "space.safetensors"
    assert run_cli("w2w", "fit", collected, "--components", 8, "--out", out, "--quiet") == 0
    return out


def test_collect_lists_and_skips_bad_adapters(collected, planted, capsys) -> None:
    rows = open_run_rows(collected)
    assert rows.shape == (80, planted.layout.dim) and rows.dtype == torch.float16
    assert rows.names == [f"model{i}" for i in range(80)]
    assert rows.layout == planted.layout
    reasons = {item["name"]: item["reason"] for item in rows.skipped}
    assert sorted(reasons) == ["broken", "empty", "model_nan", "rank3"]
    assert "holds no LoRA adapter" in reasons["empty"]
    assert "NaN or Inf" in reasons["model_nan"]
    assert "does not match the layout: LoRA rank 2 vs 3" in reasons["rank3"]
    torch.testing.assert_close(rows.read(0, 80).float(), planted.weights.half().float(), rtol=0, atol=0)
    assert rows.attributes is not None and sorted(rows.attributes) == ["attr0", "attr1"]
    assert torch.isnan(rows.attributes["attr0"]).nonzero().flatten().tolist() == [5]
    assert rows.attributes["attr1"][7].item() == pytest.approx(float(planted.coefficients[7, 1]), abs=1e-6)


def test_collect_resumes_and_refuses_other_settings(tmp_path, adapters, collected, capsys) -> None:
    out = tmp_path / "weights"
    assert run_cli("w2w", "collect", adapters, "--out", out, "--shard-size", 16, "--quiet") == 0
    shard = out / "shard-000002.safetensors"
    before = shard.read_bytes()
    shard.write_bytes(before[:-5])  # damaged: recomputed on the rerun, the others are kept
    untouched = (out / "shard-000001.safetensors").stat().st_mtime_ns
    assert run_cli("w2w", "collect", adapters, "--out", out, "--shard-size", 16, "--quiet") == 0
    assert shard.read_bytes() == before
    assert (out / "shard-000001.safetensors").stat().st_mtime_ns == untouched
    capsys.readouterr()
    assert run_cli("w2w", "collect", adapters, "--out", out, "--shard-size", 16, "--dtype", "float32") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "holds a run with other settings" in error and "dtype" in error


def test_fit_matches_the_exact_fit_of_the_collected_rows(collected, space_file) -> None:
    space = WeightSpace.load(space_file)
    exact = fit_exact(open_run_rows(collected), 8)
    top = slice(0, 5)
    torch.testing.assert_close(
        space.singular_values[top].double(), exact.singular_values[top].double(), rtol=1e-4, atol=0
    )
    cosines = (space.basis[:, top].double() * exact.basis[:, top].double()).sum(0)
    assert float(cosines.min()) > 0.9999
    assert space.names == [f"model{i}" for i in range(80)] and space.layout == exact.layout
    assert space.attributes is not None and sorted(space.attributes) == ["attr0", "attr1"]


def test_sample_writes_adapters_that_peft_loads(tmp_path, space_file, unet_factory) -> None:
    from peft import PeftModel

    out = tmp_path / "samples"
    assert run_cli("w2w", "sample", "--space", space_file, "--count", 3, "--out", out, "--seed", 4, "--quiet") == 0
    space = WeightSpace.load(space_file)
    listing = json.loads((out / "samples.json").read_text())
    assert listing["samples"] == ["sample-000000", "sample-000001", "sample-000002"]
    for index, name in enumerate(listing["samples"]):
        expected = space.reconstruct(torch.tensor(listing["coefficients"][index]))
        torch.testing.assert_close(read_adapter(out / name).vector(), expected, rtol=0, atol=0)
    model = PeftModel.from_pretrained(unet_factory(), str(out / "sample-000001"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_A" in n}
    assert loaded and all(torch.isfinite(p).all() for p in loaded.values())
    # The same seed gives the same samples; diffusers format for load_lora_weights.
    assert run_cli("w2w", "sample", "--space", space_file, "--count", 1, "--out", tmp_path / "d", "--seed", 4,
                   "--format", "diffusers", "--quiet") == 0  # fmt: skip
    assert (tmp_path / "d" / "sample-000000" / "pytorch_lora_weights.safetensors").is_file()
    torch.testing.assert_close(
        read_adapter(tmp_path / "d" / "sample-000000").vector(), read_adapter(out / "sample-000000").vector()
    )


def test_edit_moves_the_adapter_along_the_attribute_direction(tmp_path, space_file, adapters, capsys) -> None:
    from vision_kernels.weightspace import edit_direction

    out = tmp_path / "edited"
    assert run_cli("w2w", "edit", "--space", space_file, "--adapter", adapters / "model3", "--attribute", "attr0",
                   "--strength", 2.5, "--out", out) == 0  # fmt: skip
    space = WeightSpace.load(space_file)
    known = torch.isfinite(space.attributes["attr0"])
    direction = edit_direction(
        space.coefficients[known],
        space.attributes["attr0"][known],
        project_out={"attr1": space.attributes["attr1"][known]},
    )
    before = space.encode_adapter(adapters / "model3")
    after = space.encode_adapter(out)
    torch.testing.assert_close(after - before, 2.5 * direction, rtol=1e-3, atol=1e-3)
    # Outside the space nothing changed: the residual of the adapter is kept.
    original, edited = read_adapter(adapters / "model3").vector(), read_adapter(out).vector()
    step = space.reconstruct(2.5 * direction) - space.mean
    torch.testing.assert_close(edited - original, step, rtol=1e-4, atol=1e-6)
    note = json.loads((out / "w2w.json").read_text())
    assert note["attribute"] == "attr0" and note["projected_out"] == ["attr1"]
    # The attribute direction agrees with the planted first coefficient (labels = its sign).
    capsys.readouterr()
    assert run_cli("w2w", "edit", "--space", space_file, "--adapter", adapters / "model3", "--attribute", "beard",
                   "--strength", 1, "--out", tmp_path / "e2") == 2  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "unknown attribute 'beard'" in error and "['attr0', 'attr1']" in error
    assert not (tmp_path / "e2").exists()


def test_project_prints_the_coefficients(tmp_path, space_file, adapters, capsys, layout_factory) -> None:
    capsys.readouterr()
    assert run_cli("w2w", "project", "--space", space_file, "--adapter", adapters / "model7") == 0
    result = json.loads(capsys.readouterr().out)
    space = WeightSpace.load(space_file)
    torch.testing.assert_close(torch.tensor(result["coefficients"]), space.encode_adapter(adapters / "model7"))
    assert run_cli("w2w", "project", "--space", space_file, "--adapter", adapters / "model7", "--components", 3,
                   "--out", tmp_path / "c.json") == 0  # fmt: skip
    assert len(json.loads((tmp_path / "c.json").read_text())["coefficients"]) == 3
    capsys.readouterr()
    assert run_cli("w2w", "project", "--space", space_file, "--adapter", adapters / "rank3") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "does not fit this space: LoRA rank 2 vs 3" in error


def test_invert_through_a_unet_folder(tmp_path, space_file, unet_factory, capsys) -> None:
    from PIL import Image

    base = tmp_path / "tiny-unet"
    unet_factory().save_pretrained(base)
    image = tmp_path / "face.png"
    Image.fromarray((torch.rand(12, 10, 3) * 255).byte().numpy()).save(image)
    out = tmp_path / "inverted"
    assert run_cli("w2w", "invert", "--space", space_file, "--image", image, "--base-model", base, "--steps", 3,
                   "--components", 4, "--out", out, "--quiet") == 0  # fmt: skip
    note = json.loads((out / "w2w.json").read_text())
    assert len(note["losses"]) == 3 and len(note["coefficients"]) == 4
    space = WeightSpace.load(space_file)
    expected = space.reconstruct(torch.tensor(note["coefficients"]))
    torch.testing.assert_close(read_adapter(out).vector(), expected, rtol=0, atol=0)
    # A missing base model is a one-line usage error before any work (no output folder).
    capsys.readouterr()
    code = run_cli("w2w", "invert", "--space", space_file, "--image", image, "--base-model", tmp_path / "nowhere",
                   "--steps", 3, "--out", tmp_path / "never")  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "no model folder" in error
    assert not (tmp_path / "never").exists()
