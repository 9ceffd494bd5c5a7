"""The VGPNN demo section (quick) and benchmark cases are registered and run."""

from __future__ import annotations

from pathlib import Path


def test_benchmark_cases_are_registered() -> None:
    import vision_kernels.bench.cases.patch_nn_video  # noqa: F401  (registers the cases)
    from vision_kernels.bench.harness import CASES

    ours = {c.name: c for c in CASES if c.module == "patch_nn_video"}
    quick = [c for c in ours.values() if c.quick]
    full = [c for c in ours.values() if not c.quick]
    assert len(quick) == 1 and "PatchMatch" in quick[0].name
    assert len(full) == 1 and "13x144x256" in full[0].name and full[0].repeats == 1


def test_demo_section_quick(tmp_path: Path) -> None:
    from vision_kernels.demo import SECTIONS, run_demo
    from vision_kernels.patchnn import read_image, read_video

    assert "patch_nn_video" in SECTIONS
    files = run_demo(tmp_path, sections=["patch_nn_video"], quick=True, benchmarks=False)
    names = {f.name for f in files}
    assert {"input.gif", "generated_seed1.gif", "retarget_wider.gif", "inpainted.gif", "vgpnn_frames.png"} <= names
    assert read_video(tmp_path / "patch_nn_video" / "retarget_wider.gif")[0].shape == (8, 32, 60, 3)
    assert read_image(tmp_path / "patch_nn_video" / "vgpnn_frames.png").shape[0] > 200
