"""clip decompose / textspan / ablate as dataset runs: CLI end to end, exact sums, kill-and-resume, refusal,
damage detection, and the in-memory methods' results from the streamed statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vision_kernels.cli import main
from vision_kernels.runs import RunReader

pytest.importorskip("open_clip")

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
BANK = ["a red image", "a green image", "a blue image", "stripes", "a dog", "a car", "noise", "a beach", "text"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, synth) -> dict[str, Path]:
    """A tiny open_clip config, 3 classes x 6 images (one unreadable) and a text bank."""
    root = tmp_path_factory.mktemp("clip_runs")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    images = synth.class_folder(root / "images", classes=3, per_class=6)
    (images / "class_1" / "img_002.png").write_bytes(b"broken")
    bank = root / "bank.txt"
    bank.write_text("\n".join(BANK) + "\n")
    return {"root": root, "config": config, "images": images, "bank": bank}


def _decompose_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "clip",
        "decompose",
        "--model",
        str(data["config"]),
        "--images",
        str(data["images"]),
        "--out",
        str(out),
        "--shard-size",
        "4",
        "--batch-size",
        "3",
        "--workers",
        "0",
        *extra,
    ]


@pytest.fixture(scope="module")
def full_run(data: dict[str, Path]) -> Path:
    out = data["root"] / "full"
    assert main(_decompose_args(data, out)) == 0
    return out


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


def test_decompose_run_is_exact_and_lists_unreadable_images(data: dict[str, Path], tmp_path: Path) -> None:
    from vision_kernels.clip.data import model_transform, open_image_source
    from vision_kernels.clip.runs import ModelChoice, load_model

    out = tmp_path / "run"
    assert main(_decompose_args(data, out, "--dtype", "float32", "--layers", "1", "2")) == 0
    reader = RunReader.open(out, kind="clip.decompose")
    reader.verify()
    assert reader.extra["failed_count"] == 1
    failed = [f for record in reader.records() for f in record["failed"]]
    assert [f[:2] for f in failed] == [[8, "class_1/img_002.png"]] and "UnidentifiedImageError" in failed[0][2]
    assert reader.options["layers"] == [1, 2] and reader.options["source"]["classes"] == [
        "class_0",
        "class_1",
        "class_2",
    ]
    index = reader.concatenated("index")
    assert index.tolist() == [i for i in range(18) if i != 8]
    assert reader.concatenated("label").tolist() == [i // 6 for i in index.tolist()]
    heads = reader.concatenated("heads")  # [17, 2, 4, 32]
    assert heads.shape == (17, 2, 4, 32) and heads.dtype == torch.float32
    total = (
        heads.double().sum((1, 2))
        + reader.concatenated("other_heads").double()
        + reader.concatenated("mlps").double().sum(1)
        + reader.concatenated("embedding").double()
        + reader.concatenated("bias").double()
    )
    loaded = load_model(ModelChoice(str(data["config"])), function="test")
    source = open_image_source(data["images"])
    transform = model_transform(loaded)
    images = torch.stack([transform(source.load(i)) for i in index.tolist()])
    with torch.no_grad():
        want = loaded.model.encode_image(images).double()
    torch.testing.assert_close(reader.concatenated("output").double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(total, want, rtol=1e-4, atol=1e-5)


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from vision_kernels.runs import shards
    from vision_kernels.cli import main

    original, written = shards.ShardedRun.write, []

    def write(self, shard, tensors, record=None):
        if len(written) == 2:  # third shard: die in the middle of the run, as a SIGKILL from outside would
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, shard, tensors, record=record)
        written.append(shard.index)

    shards.ShardedRun.write = write
    sys.exit(main(sys.argv[1:]))
    """
)


def test_sigkilled_run_resumes_byte_identical(data: dict[str, Path], full_run: Path, tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(_KILL_SCRIPT)
    out = tmp_path / "run"
    env = dict(os.environ, VK_PROGRESS="0")
    killed = subprocess.run(
        [sys.executable, str(script), *_decompose_args(data, out)], env=env, timeout=600, capture_output=True
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert len(list(out.glob("shard-*.safetensors"))) == 2 and not (out / "manifest.json").exists()
    assert main(["clip", "textspan", str(out), "--texts", str(data["bank"])]) == 2  # unfinished: one-line error
    assert main(_decompose_args(data, out)) == 0  # the same command resumes
    assert _shard_bytes(out) == _shard_bytes(full_run)
    assert len(_shard_bytes(out)) == 5


def test_truncated_or_corrupted_shard_is_recomputed_or_refused(
    data: dict[str, Path], full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    shard = out / "shard-000002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    assert main(_decompose_args(data, out)) == 0  # rerun: the damaged shard is recomputed, not trusted
    assert _shard_bytes(out) == _shard_bytes(full_run)
    data_bytes = bytearray(shard.read_bytes())
    data_bytes[-3] ^= 0x55  # same size, other content: caught by the checksum when read
    shard.write_bytes(bytes(data_bytes))
    capsys.readouterr()
    assert main(["clip", "textspan", str(out), "--texts", str(data["bank"]), "--heads", "last1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "fails its checksum" in error[0]


def test_other_settings_are_refused_unless_overwrite(
    data: dict[str, Path], full_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    capsys.readouterr()
    assert main(_decompose_args(data, out, "--layers", "2")) == 2
    error = capsys.readouterr().err.strip()
    assert "holds a run with other settings" in error and "options.layers" in error and "\n" not in error
    assert main(_decompose_args(data, out, "--seed", "1")) == 2  # other random weights: another fingerprint
    assert main(_decompose_args(data, out, "--layers", "2", "--overwrite")) == 0
    assert RunReader.open(out).options["layers"] == [2]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "ViT-B-33"], "unknown open_clip model 'ViT-B-33'; close names: ViT-B-32"),
        (["--layers", "5"], "argument 'layers' must hold layer indices in [-3, 3)"),
        (["--layers", "1.5"], "invalid int value: '1.5'"),
        (["--images", "/nonexistent/folder"], "no such file or folder '/nonexistent/folder'"),
        (["--batch-size", "0"], "expected a positive integer, got '0'"),
        (["--pretrained", "laion2b_s34b_b79k"], "a model config file has no pretrained tags"),
        (["--model", "ViT-B-32", "--pretrained", "nope"], "ViT-B-32 has no weights tagged 'nope'; tags: openai"),
    ],
)
def test_decompose_mistakes_are_one_line_errors(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = _decompose_args(data, tmp_path / "run")
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    if extra[0] == "--layers" and extra[1] == "1.5":
        args = args[: args.index("--layers") + 2]
    with pytest.raises(SystemExit) if "invalid int" in message or "positive integer" in message else _nothing():
        assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1] and "Traceback" not in "\n".join(error)
    assert not (tmp_path / "run" / "manifest.json").exists()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> bool:
        return False


def test_textspan_from_shards_equals_in_memory_text_span(data: dict[str, Path], full_run: Path, tmp_path: Path) -> None:
    from vision_kernels.clip import encode_texts, text_span
    from vision_kernels.clip.runs import DecomposeRun

    assert _textspan(full_run, data["bank"], "2.1,-1.3,1.0", 4, tmp_path) == 0
    report = json.loads((tmp_path / "textspan.json").read_text())
    assert [(h["layer"], h["head"]) for h in report["heads"]] == [(2, 1), (2, 3), (1, 0)]
    assert report["images"] == 17
    run = DecomposeRun(full_run, "test")
    loaded = run.load_model()
    bank = encode_texts(loaded.model, BANK, tokenizer=loaded.tokenizer)
    heads = RunReader.open(full_run).concatenated("heads").double()  # [17, 3, 4, 32]
    for entry in report["heads"]:
        want = text_span(heads[:, entry["layer"], entry["head"]], bank, BANK, num_texts=4)
        assert entry["texts"] == want.texts
        torch.testing.assert_close(
            torch.tensor(entry["explained_variance"], dtype=torch.float64),
            want.explained_variance.cpu(),
            rtol=1e-6,
            atol=1e-9,
        )
    markdown = (tmp_path / "textspan.md").read_text()
    html = (tmp_path / "textspan.html").read_text()
    first = report["heads"][0]
    assert f"| 1 | {first['texts'][0]} | {first['explained_variance'][0]:.3f} |" in markdown
    assert "<h2>Layer 2, head 1</h2>" in html and html.count("<tr>") == 3 + sum(
        len(h["texts"]) for h in report["heads"]
    )


def test_ablate_from_shards_equals_in_memory_mean_ablation(
    data: dict[str, Path], full_run: Path, tmp_path: Path
) -> None:
    from vision_kernels.clip import mean_ablate, zero_shot_accuracy, zero_shot_classifier
    from vision_kernels.clip.runs import DecomposeRun, ablation_reference

    labels = tmp_path / "names.txt"
    labels.write_text("red thing\ngreen thing\nblue thing\n")
    assert (
        main(["clip", "ablate", str(full_run), "--labels", str(labels), "--heads", "2.0,2.2", "--out", str(tmp_path)])
        == 0
    )
    report = json.loads((tmp_path / "ablation.json").read_text())
    rows = {row["ablation"]: row["accuracy"] for row in report["rows"]}
    assert list(rows)[:2] == ["none", "all MLPs"] and "attention layers 0-2" in rows and "heads 2.0,2.2" in rows
    run = DecomposeRun(full_run, "test")
    reader = RunReader.open(full_run)
    whole = run.decomposition(
        {n: reader.concatenated(n) for n in ("heads", "other_heads", "mlps", "embedding", "bias", "output")},
        torch.float64,
    )
    labels_all = reader.concatenated("label")
    loaded = run.load_model()
    classifier = zero_shot_classifier(
        loaded.model, ["red thing", "green thing", "blue thing"], tokenizer=loaded.tokenizer
    )
    reference = ablation_reference(run)  # streamed means, one row
    for name, ablation in [
        ("none", {}),
        ("all MLPs", {"mlps": "all"}),
        ("attention layers 0-1", {"layers": [0, 1]}),
        ("heads 2.0,2.2", {"heads": [(2, 0), (2, 2)]}),
    ]:
        in_memory = mean_ablate(whole, **ablation)  # means over the images themselves
        torch.testing.assert_close(mean_ablate(whole, reference, **ablation), in_memory, rtol=1e-12, atol=1e-12)
        want = zero_shot_accuracy(in_memory, classifier, labels_all)
        assert rows[name] == pytest.approx(want, abs=1e-6), name
    assert main(["clip", "ablate", str(full_run), "--labels", str(data["bank"])]) == 2  # 9 names for 3 classes


def test_nan_images_are_rejected_by_decompose(data: dict[str, Path]) -> None:
    from vision_kernels.clip import decompose
    from vision_kernels.clip.runs import ModelChoice, load_model

    loaded = load_model(ModelChoice(str(data["config"])), function="test")
    images = torch.rand(3, 3, 32, 32)
    images[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"decompose: argument 'images' must be finite, got NaN or Inf in 1 of 3"):
        decompose(loaded.model, images)
    images[1, 0, 5, 5] = float("inf")
    with pytest.raises(ValueError, match="first: image 1"):
        decompose(loaded.model, images)


def _textspan(run: Path, bank: Path, heads: str, k: int, out: Path) -> int:
    """``vision-kernels clip textspan RUN --texts BANK --heads HEADS --k K --out OUT``."""
    words = ["clip", "textspan", run, "--texts", bank, "--heads", heads, "--k", k, "--out", out]
    return main([str(word) for word in words])


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_rank(data: dict[str, Path], full_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    env = dict(os.environ, VK_PROGRESS="0", OMP_NUM_THREADS="1")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vision_kernels.cli",
    ]
    for args in (
        _decompose_args(data, out),
        ["clip", "textspan", str(out), "--texts", str(data["bank"]), "--heads", "last2", "--k", "3"],
        ["clip", "ablate", str(out), "--heads", "2.1"],
    ):
        done = subprocess.run(launcher + args, env=env, timeout=600, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    two = RunReader.open(out)
    assert two.manifest["world_size"] == 2
    assert _shard_bytes(out) == _shard_bytes(full_run)
    one = tmp_path / "one"
    one.mkdir()
    assert _textspan(full_run, data["bank"], "last2", 3, one) == 0
    assert main(["clip", "ablate", str(full_run), "--heads", "2.1", "--out", str(one)]) == 0
    span_one, span_two = (json.loads((f / "textspan.json").read_text())["heads"] for f in (one, out))
    assert [h["texts"] for h in span_one] == [h["texts"] for h in span_two]
    for a, b in zip(span_one, span_two, strict=True):
        # the text embeddings differ in the last float32 bits between 1 and several threads per process
        assert a["explained_variance"] == pytest.approx(b["explained_variance"], rel=1e-5)
    table_one, table_two = (json.loads((f / "ablation.json").read_text())["rows"] for f in (one, out))
    assert table_one == table_two


def test_segment_scores_equal_in_memory_segmentation_scores(
    data: dict[str, Path], tmp_path: Path, synth, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from PIL import Image

    from vision_kernels.clip import encode_texts, heatmaps, segmentation_scores
    from vision_kernels.clip.data import model_transform, open_image_source
    from vision_kernels.clip.runs import ModelChoice, load_model

    images = synth.class_folder(tmp_path / "images", classes=2, per_class=3, size=40)
    masks = tmp_path / "masks"
    for k, path in enumerate(sorted(images.rglob("*.png"))):
        target = masks / path.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((40, 40), np.uint8)
        pixels[5 + k : 25 + k, 8:30] = 255
        Image.fromarray(pixels).save(target)
    out = tmp_path / "scores"
    args = [
        "clip",
        "segment",
        "--model",
        str(data["config"]),
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--out",
        str(out),
        "--layers",
        "1",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
    ]
    assert main(args) == 0
    report = json.loads((out / "segmentation.json").read_text())
    assert report["images"] == 6
    loaded = load_model(ModelChoice(str(data["config"])), function="test")
    source = open_image_source(images)
    transform = model_transform(loaded)
    batch = torch.stack([transform(source.load(i)) for i in range(6)])
    from vision_kernels.clip import decompose

    decomposition = decompose(loaded.model, batch, layers=[1, 2], per_token=True, per_head=False, per_layer=False)
    texts = encode_texts(loaded.model, ["a photo of a class_0.", "a photo of a class_1."], tokenizer=loaded.tokenizer)
    maps = heatmaps(decomposition, texts, contrast="mean", image_size=(32, 32))  # [6, 2, 32, 32]
    maps = maps[torch.arange(6), torch.tensor(source.labels)]
    truth = torch.zeros(6, 32, 32, dtype=torch.bool)
    for k in range(6):  # the 40 px masks through resize to 32 (nearest) and center crop
        mask = np.zeros((40, 40), np.uint8)
        mask[5 + k : 25 + k, 8:30] = 255
        resized = Image.fromarray(mask).resize((32, 32), Image.NEAREST)
        truth[k] = torch.from_numpy(np.asarray(resized) > 0)
    want = segmentation_scores(maps, truth)
    for name, value in want.items():
        assert report["scores"][name] == pytest.approx(value, abs=1e-6), name
    (masks / "class_1" / "img_002.png").unlink()
    capsys.readouterr()
    assert main(args) == 2
    assert "1 of 6 images have no mask" in capsys.readouterr().err


def test_checkpoint_weights_are_loaded_and_fingerprinted(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    from vision_kernels.clip import model_identity
    from vision_kernels.clip.runs import ModelChoice, load_model

    other = load_model(ModelChoice(str(data["config"]), seed=5), function="test").model
    checkpoint = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(checkpoint))
    out = tmp_path / "run"
    assert main(_decompose_args(data, out, "--checkpoint", str(checkpoint))) == 0
    options = RunReader.open(out).options
    assert options["fingerprint"] == model_identity(other, str(data["config"])).fingerprint
    assert options["model"]["weights"] == "checkpoint" and options["model"]["checkpoint"]["sha256"]
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(_decompose_args(data, tmp_path / "other", "--checkpoint", str(damaged))) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_a_source_without_one_readable_image_is_an_error(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for k in range(3):
        (images / f"{k}.png").write_bytes(b"not an image")
    args = _decompose_args(data, tmp_path / "run")
    args[args.index("--images") + 1] = str(images)
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert "none of the 3 images" in error[-1] and "'0.png'" in error[-1]


def test_other_clip_modules_add_subcommands(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from vision_kernels.clip import cli as clip_cli

    module = types.ModuleType("vk_test_extra_cli")

    def add_subcommands(commands) -> None:  # noqa: ANN001 - argparse's private subparsers type
        commands.add_parser("extra-test").set_defaults(handler=lambda args: 7)

    module.add_subcommands = add_subcommands  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vk_test_extra_cli", module)
    monkeypatch.setattr(clip_cli, "_extra_command_modules", lambda: ["vk_test_extra_cli"])
    assert main(["clip", "extra-test"]) == 7
