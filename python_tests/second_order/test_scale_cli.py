"""The neuron and index commands (vision_kernels.clip.scale_cli) end to end on a synthetic image folder with a
tiny random-weight open_clip model: results equal the Python API, kill-and-resume, 2 gloo ranks equal 1,
one-line usage errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import vision_kernels.clip as vc
from vision_kernels.clip import scale_cli
from vision_kernels.clip.neuron_runs import load_neuron_statistics
from vision_kernels.testing import run_ranks

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "patch_size": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
NAME = "vk-tiny-scale-test"
IMAGES = 20


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registered tiny model config, its random weights as a checkpoint, and a class-folder image tree with one
    unreadable file."""
    import open_clip
    from PIL import Image

    root = tmp_path_factory.mktemp("scale")
    config = root / "configs"
    config.mkdir()
    (config / f"{NAME}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(NAME).eval()
    torch.save(model.state_dict(), root / "weights.pt")
    rng = np.random.default_rng(0)
    for k in range(IMAGES):
        folder = root / "images" / ("cat" if k % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(folder / f"{k:03d}.png")
    (root / "images" / "dog" / "broken.png").write_bytes(b"not a png")
    (root / "bank.txt").write_text("\n".join(f"a photo of thing number {i}" for i in range(12)))
    return {"root": root, "config": config, "weights": root / "weights.pt", "images": root / "images"}


def _model_args(world) -> list[str]:
    return ["--model", NAME, "--checkpoint", str(world["weights"]), "--workers", "0", "--batch-size", "4"]


def _neurons_argv(world, out: Path, *extra: str) -> list[str]:
    return ["neurons", *_model_args(world), "--layer", "1", "--neurons", "0,5,9,100", "--top-k", "3",
            "--images", str(world["images"]), "--shard-size", "6", "--out", str(out), *extra]  # fmt: skip


def _loaded(world):
    from vision_kernels.clip.data import model_transform, open_image_source
    from vision_kernels.clip.models import load_clip

    loaded = load_clip(NAME)
    loaded.model.load_state_dict(torch.load(world["weights"], weights_only=True))
    source = open_image_source(world["images"])
    transform = model_transform(loaded)
    readable = [i for i, key in enumerate(source.keys) if not key.endswith("broken.png")]
    images = torch.stack([transform(source.load(i)) for i in readable])
    return loaded, source, readable, images


def test_neurons_and_describe_end_to_end(world, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert scale_cli.main(_neurons_argv(world, out)) == 0
    stats, settings = load_neuron_statistics(out / "statistics.safetensors")
    loaded, source, readable, images = _loaded(world)
    want = vc.collect_neuron_statistics(loaded.model, images, 1, [0, 5, 9, 100], top_k=3)
    torch.testing.assert_close(stats.principal, want.principal, rtol=1e-4, atol=1e-6)
    assert torch.equal(stats.top_images, torch.tensor(readable)[want.top_images])
    assert [source.keys[p] for p in settings["skipped"]] == ["dog/broken.png"] and settings["model"] == NAME
    capsys.readouterr()
    argv = ["describe-neurons", str(out), "--texts", str(world["root"] / "bank.txt"), "--n-nonzero", "3",
            "--checkpoint", str(world["weights"])]  # fmt: skip
    assert scale_cli.main(argv) == 0
    report = json.loads((out / "neurons.json").read_text())
    assert [entry["neuron"] for entry in report["neurons"]] == [0, 5, 9, 100]
    assert all(len(entry["terms"]) == 3 for entry in report["neurons"])
    assert report["neurons"][0]["top_images"][0] == source.keys[int(stats.top_images[0, 0])]
    assert "## Neuron 5" in (out / "neurons.md").read_text() and "<h2>Neuron 9" in (out / "neurons.html").read_text()
    # the reports are written atomically: no temporary left behind
    assert not [p for p in out.iterdir() if ".vk-tmp-" in p.name]


def test_rerun_with_other_settings_is_refused_in_one_line(world, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert scale_cli.main(_neurons_argv(world, out)) == 0
    capsys.readouterr()
    argv = _neurons_argv(world, out)
    argv[argv.index("--top-k") + 1] = "2"
    assert scale_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run with other settings (options.top_k: 3 there, 2 now" in err[0]
    assert scale_cli.main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--model", "no-such-model"), "argument 'name' must be an open_clip model name"),
        (("--layer", "7"), "argument 'layer' must be an MLP layer with at least one later layer"),
        (("--layer", "2"), "argument 'layer' must be an MLP layer with at least one later layer"),
        (("--neurons", "0,500"), "argument 'neurons' must hold neuron indices in [0, 128)"),
        (("--images", "/nonexistent/images"), "no such file or folder"),
        (("--top-k", "50"), "argument 'top_k' must be in [1, 21] (the number of images), got 50"),
    ],
)
def test_neurons_usage_errors(world, tmp_path, capsys, change, message) -> None:
    argv = _neurons_argv(world, tmp_path / "run")
    argv[argv.index(change[0]) + 1] = change[1]
    assert scale_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], err


def test_argument_syntax_errors_exit_2(world, tmp_path, capsys) -> None:
    for argv in (
        ["index", "build", *_model_args(world), "--images", str(world["images"]), "--out", str(tmp_path / "db"),
         "--groups", "colors"],
        ["index", "build", *_model_args(world), "--images", str(world["images"]), "--out", str(tmp_path / "db"),
         "--heads", "1-2"],
        [*_neurons_argv(world, tmp_path / "run"), "--batch-size", "0"],
        ["describe-neurons", str(tmp_path / "missing"), "--texts", "general", "--n-nonzero", "2"],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            scale_cli.main(argv)
        assert exit_info.value.code == 2
    assert "expected a group as NAME=L:H+L:H" in capsys.readouterr().err


_KILLED = textwrap.dedent(
    """
    import os, signal, sys
    import open_clip
    open_clip.add_model_config(sys.argv[1])
    from vision_kernels.runs import shards
    from vision_kernels.clip import scale_cli
    write, done = shards.ShardedRun.write, []
    def write_then_die(self, *args, **kwargs):
        write(self, *args, **kwargs)
        done.append(1)
        if len(done) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    shards.ShardedRun.write = write_then_die
    sys.exit(scale_cli.main(sys.argv[3:]))
    """
)


def _kill_after(world, writes: int, argv: list[str]) -> None:
    env = dict(os.environ, VK_PROGRESS="0")
    process = subprocess.run([sys.executable, "-c", _KILLED, str(world["config"]), str(writes), *argv], env=env,
                             timeout=600)  # fmt: skip
    assert process.returncode == -signal.SIGKILL


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.safetensors"))}


@pytest.mark.slow
def test_neurons_killed_and_resumed_equals_uninterrupted(world, tmp_path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    assert scale_cli.main(_neurons_argv(world, full)) == 0
    _kill_after(world, 5, _neurons_argv(world, part))  # 4 sums shards, then one shard of the top pass
    assert not (part / "statistics.safetensors").exists() and (part / "sums" / "manifest.json").exists()
    assert scale_cli.main(_neurons_argv(world, part)) == 0
    for sub in ("sums", "top"):
        assert _shard_bytes(part / sub) == _shard_bytes(full / sub)
    a, _ = load_neuron_statistics(full / "statistics.safetensors")
    b, _ = load_neuron_statistics(part / "statistics.safetensors")
    assert torch.equal(a.principal, b.principal) and torch.equal(a.top_images, b.top_images)


_RANK_CLI = textwrap.dedent(
    """
    import sys
    import open_clip
    open_clip.add_model_config(sys.argv[1])
    from vision_kernels.clip import scale_cli
    sys.exit(scale_cli.main(sys.argv[2:]))
    """
)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_cli(world, tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert scale_cli.main(_neurons_argv(world, one)) == 0
    script = tmp_path / "cli.py"
    script.write_text(_RANK_CLI)
    cli = [sys.executable, script, world["config"]]
    assert [r.returncode for r in run_ranks([*cli, *_neurons_argv(world, two)])] == [0, 0]
    assert _shard_bytes(one / "sums") == _shard_bytes(two / "sums")  # shards do not depend on the ranks
    a, _ = load_neuron_statistics(one / "statistics.safetensors")
    b, _ = load_neuron_statistics(two / "statistics.safetensors")
    assert torch.equal(a.top_images, b.top_images)
    for name in ("mean", "top_norms", "principal"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-9, atol=1e-12)
    db_one, db_two = tmp_path / "db1", tmp_path / "db2"
    build = ["index", "build", *_model_args(world), "--images", str(world["images"]), "--layers", "2",
             "--groups", "mix=1:0+2:3", "--shard-size", "6"]  # fmt: skip
    assert scale_cli.main([*build, "--out", str(db_one)]) == 0
    assert [r.returncode for r in run_ranks([*cli, *build, "--out", db_two])] == [0, 0]
    loaded, _, _, images = _loaded(world)
    first, second = vc.HeadIndex.load(db_one, loaded.model), vc.HeadIndex.load(db_two, loaded.model)
    assert first.ids == second.ids and not (tmp_path / "db2.parts").exists()
    for key in first.keys:
        a_result = first.search_images(loaded.model, images[:4], key, k=5)
        b_result = second.search_images(loaded.model, images[:4], key, k=5)
        assert a_result.ids == b_result.ids
        torch.testing.assert_close(a_result.scores, b_result.scores, rtol=1e-6, atol=1e-6)


def test_index_build_and_query_end_to_end(world, tmp_path, capsys) -> None:
    db = tmp_path / "db"
    argv = ["index", "build", *_model_args(world), "--images", str(world["images"]), "--heads", "2:1,1:0",
            "--groups", "mix=1:0+2:3", "--shard-size", "7", "--sample-size", "9", "--out", str(db)]  # fmt: skip
    assert scale_cli.main(argv) == 0
    loaded, source, readable, images = _loaded(world)
    index = vc.HeadIndex.load(db, loaded.model)
    assert index.count == IMAGES and index.ids == [source.keys[i] for i in readable]
    assert sorted(index.keys) == ["L1H0", "L2H1", "mix"]
    # the mean is the first sample_size images' (one unreadable among them), centring every key
    contributions = index.contributions(loaded.model, images)
    first_nine = [j for j, i in enumerate(readable) if i < 9]
    np.testing.assert_allclose(index.means["mix"], contributions["mix"][first_nine].mean(0).numpy(), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    want = vc.HeadIndex.from_contributions(contributions, index.identity, sample_size=1)
    query_image = world["images"] / source.keys[readable[3]]
    capsys.readouterr()
    montage = tmp_path / "neighbours.png"
    query = ["index", "query", str(db), "--image", str(query_image), "--group", "mix", "-k", "4",
             "--checkpoint", str(world["weights"]), "--montage", str(montage)]  # fmt: skip
    assert scale_cli.main(query) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[:4]]
    assert [line[2] for line in lines][0] == source.keys[readable[3]]  # an image is its own nearest neighbour
    from PIL import Image

    with Image.open(montage) as picture:
        assert picture.size == (4 * 128, 128)
    assert scale_cli.main(["index", "query", str(db), "--text", "a photo", "--head", "2:1", "-k", "3",
                           "--checkpoint", str(world["weights"])]) == 0  # fmt: skip
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert want.count == index.count
    # usage errors: unknown group, k too large, existing database without --overwrite, query image unreadable
    for bad, message in (
        (["--group", "nope"], "is not a key of"),
        (["-k", "99"], "-k: expected at most 20"),
        (["--image", str(world["images"] / "dog" / "broken.png")], "--image: cannot read"),
    ):
        argv_bad = list(query[:-2])
        flag = bad[0]
        argv_bad[argv_bad.index(flag) + 1] = bad[1]
        assert scale_cli.main(argv_bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert scale_cli.main(argv) == 2
    assert "exists and is not empty; give --overwrite" in capsys.readouterr().err
