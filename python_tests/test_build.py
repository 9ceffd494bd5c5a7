"""The installed package: build information, CUDA compilation report, emulation module."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import vision_kernels
from vision_kernels import _native

REPO = Path(__file__).resolve().parents[1]


def test_build_info_fields() -> None:
    info = vision_kernels.build_info()
    assert info["version"] == vision_kernels.__version__ == info["native_version"]
    for key in ("cuda_compiled", "gpu_available", "emulation_available", "openmp"):
        assert isinstance(info[key], bool), key
    assert isinstance(info["cuda_architectures"], list)
    assert info["cxx_compiler"]
    assert info["num_threads"] >= 1
    assert "distance_cpu" in info["bindings"]
    if not torch.cuda.is_available():
        assert info["gpu_available"] is False and info["gpu_reason"]


def test_cuda_kernels_compiled_when_nvcc_present() -> None:
    # No silent fallback: a machine with nvcc must build the CUDA kernels (VK_CUDA=AUTO or ON).
    if shutil.which("nvcc") is None and os.environ.get("VK_CUDA", "AUTO") != "ON":
        pytest.skip("no nvcc on PATH")
    info = vision_kernels.build_info()
    assert info["cuda_compiled"], "nvcc is on PATH but the CUDA kernels were not compiled"
    assert "distance_cuda" in info["bindings"]
    expected = os.environ.get("CUDAARCHS") or "80;86;89;90"
    assert info["cuda_architectures"] == [int(a) for a in re.split(r"[;,]", expected)]


def _resource_report() -> str:
    module_dir = Path(_native.cpu_module().__file__).parent
    report = module_dir / "cuda_resource_usage.txt"
    assert report.exists(), f"no ptxas report next to {module_dir}"
    return report.read_text()


def _entries(report: str) -> list[tuple[str, str, int, int]]:
    """(source, kernel, spill stores, spill loads) for every compiled kernel and architecture."""
    entries = []
    source = ""
    kernel = ""
    for line in report.splitlines():
        if line.startswith("=== source: "):
            source = line.split(": ", 1)[1]
        match = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if match:
            kernel = f"{match.group(1)} [{match.group(2)}]"
        match = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if match and kernel:
            entries.append((source, kernel, int(match.group(1)), int(match.group(2))))
            kernel = ""
    return entries


def test_every_cu_file_compiled_without_register_spills() -> None:
    if not vision_kernels.build_info()["cuda_compiled"]:
        pytest.skip("CUDA kernels not compiled")
    if os.environ.get("VK_RELEASE_WHEEL"):
        pytest.skip("a release wheel leaves out ptxas's report (VK_RELEASE=ON); the test build checks it")
    report = _resource_report()
    entries = _entries(report)
    sources = {path.name for path in (REPO / "csrc").glob("*/*.cu")}
    reported = {source for source, *_ in entries}
    assert sources <= reported, f"no ptxas report for {sorted(sources - reported)}"
    spilling = [(s, k, st, ld) for s, k, st, ld in entries if st or ld]
    assert not spilling, "kernels spill registers to local memory:\n" + "\n".join(
        f"  {s}: {k}: {st} B stores, {ld} B loads" for s, k, st, ld in spilling
    )
    architectures = {int(a) for a in re.findall(r"for 'sm_(\d+)'", report)}
    assert architectures == set(vision_kernels.build_info()["cuda_architectures"])


def test_spill_parser_detects_spills() -> None:
    # The check above must be able to fail: feed it a report with a spill.
    report = (
        "=== source: x.cu\n"
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'\n"
        "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
    )
    assert _entries(report) == [("x.cu", "_Z1kv [sm_80]", 4, 4)]


def test_emulation_module_carries_every_cuda_binding() -> None:
    if not vision_kernels.build_info()["emulation_available"]:
        pytest.skip("no emulation module")
    emu = _native.emulation_module()
    info = emu.build_info()
    assert info["emulation"] is True
    cuda_functions = {name for name in dir(_native.cpu_module()) if name.endswith("_cuda")}
    assert cuda_functions <= set(dir(emu))


def test_threads_follow_torch() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert vision_kernels.build_info()["num_threads"] == 1
    finally:
        torch.set_num_threads(before)
    assert vision_kernels.build_info()["num_threads"] == before


def test_test_build_keeps_the_emulation_module() -> None:
    # Only release wheels (VK_RELEASE=ON, make wheel) leave out _C_emu; a test build on a machine
    # with the CUDA toolkit must have it, or every emulation test would be skipped silently.
    if os.environ.get("VK_RELEASE_WHEEL"):
        assert not vision_kernels.build_info()["emulation_available"], "the release wheel carries _C_emu"
        return
    if shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit on PATH")
    assert vision_kernels.build_info()["emulation_available"], "test build without vision_kernels._C_emu"
