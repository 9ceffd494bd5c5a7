"""The CLIP demo section and benchmark cases run and produce what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def test_benchmark_cases_are_registered_and_their_contenders_agree() -> None:
    from vision_kernels.bench.cli import load_cases
    from vision_kernels.bench.harness import CASES

    load_cases()
    clip_cases = {c.name: c for c in CASES if c.module == "attention_decomp"}
    assert len(clip_cases) == 5
    op_case = next(c for name, c in clip_cases.items() if name.startswith("attention_decomposition op"))
    contenders = op_case.setup(True)
    torch.testing.assert_close(contenders.ours(), contenders.reference(), rtol=1e-4, atol=1e-5)
    assert contenders.flops and contenders.flops > 0


@pytest.mark.slow
def test_demo_section_quick(tmp_path: Path) -> None:
    from vision_kernels.demo import SECTIONS, run_demo

    assert "attention_decomp" in SECTIONS
    files = run_demo(tmp_path, sections=["attention_decomp"], quick=True, benchmarks=False)
    names = {f.name for f in files}
    assert names == {"decomposition.md", "layer_contributions.png", "textspan.md", "heatmaps.png"}
    report = (tmp_path / "attention_decomp" / "decomposition.md").read_text()
    errors = [
        float(line.split("|")[2])
        for line in report.splitlines()
        if line.startswith("| per_term") or line.startswith("| even_split")
    ]
    assert len(errors) == 2 and max(errors) < 1e-5
    assert "| 1 |" in (tmp_path / "attention_decomp" / "textspan.md").read_text()
