"""`vision-kernels gpu-check` without a GPU: the no-device exit, the device detection with torch faked, the build
command, the per-kernel report and JSON, the whole orchestration with its subprocesses faked, and the device mode
of the parity tests (VK_KERNEL_DEVICE) routed through the op's dispatch on CPU tensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vision_kernels import testing
from vision_kernels.gpucheck import NO_DEVICE, cases, ceilings, report, run
from vision_kernels.gpucheck.device import Device, cuda_arch, find_device

ROOT = Path(__file__).resolve().parents[1]


def fake_torch(cuda: str | None = "12.4", count: int = 1, capability=(8, 6)) -> SimpleNamespace:
    properties = SimpleNamespace(name="NVIDIA Fake 3090", total_memory=24 * 2**30)
    return SimpleNamespace(
        __version__="2.14.1",
        version=SimpleNamespace(cuda=cuda),
        cuda=SimpleNamespace(
            is_available=lambda: count > 0,
            device_count=lambda: count,
            get_device_properties=lambda index: properties,
            get_device_capability=lambda index: capability,
        ),
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_a_device_exits_77_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "vision_kernels.gpucheck", "--no-build"], cwd=ROOT / "python_tests",
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == NO_DEVICE == 77
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vision-kernels gpu-check: no CUDA device, nothing checked: ")
    assert done.stdout == ""


def test_device_detection_with_torch_faked() -> None:
    device, reason = find_device(fake_torch())
    assert device == Device(0, "NVIDIA Fake 3090", (8, 6), 24.0) and device.arch == "86" and reason == ""
    assert find_device(fake_torch(capability=(9, 0)))[0].arch == "90"  # type: ignore[union-attr]
    assert find_device(fake_torch(capability=(12, 0)))[0].arch == "120"  # type: ignore[union-attr]
    none, reason = find_device(fake_torch(cuda=None))
    assert none is None and "CPU-only build" in reason
    none, reason = find_device(fake_torch(count=0))
    assert none is None and "no CUDA device is visible" in reason
    assert cuda_arch((7, 5)) == "75"
    with pytest.raises(ValueError, match="unexpected compute capability 8.10"):
        cuda_arch((8, 10))


def test_build_command_targets_the_device() -> None:
    command, env = run.build_command("/venv/bin/python", ROOT, Device(0, "x", (8, 9), 24.0))
    assert command == ["/venv/bin/python", "-m", "pip", "install", f"{ROOT}[test]", "-Cbuild-dir=build/gpu-check-sm89"]
    assert env == {"VK_CUDA": "ON", "CUDAARCHS": "89"}
    assert run.find_source(ROOT / "python_tests" / "runs") == ROOT
    assert run.find_source(Path("/")) is None


def records() -> dict:
    return {
        "distance/test_a.py::test_parity[cuda_emulated]": {"outcome": "passed", "kernels": ["sq_l2_distance"]},
        "distance/test_a.py::test_bad[cuda_emulated]": {"outcome": "passed", "kernels": ["sq_l2_distance"]},
        "pca/test_b.py::test_parity[cuda_emulated]": {
            "outcome": "failed",
            "kernels": ["pca_project"],
            "message": "AssertionError: 0.1 > 1e-5",
        },  # fmt: skip
        "pca/test_b.py::test_skipped": {"outcome": "skipped", "kernels": []},
    }


def bench_rows() -> list:
    return [
        {"ceilings": {"fp32_gemm_tflops": 19.5, "fp16_gemm_tflops": 250.0, "copy_gbs": 1500.0}, "faiss_gpu": False},
        {
            "kernel": "sq_l2_distance",
            "case": "16384^2",
            "ours": {"ms": 2.0},
            "reference": {"ms": 8.0},
            "anchors": {"faiss-gpu": {"ms": 3.0}, "torch.cdist^2": {"error": "OutOfMemoryError: ..."}},
            "fraction_of_ceiling": 0.55,
            "ceiling": "fp32_gemm",
        },  # fmt: skip
        {"kernel": "pca_project", "case": "5000", "error": "not run: time budget spent"},
    ]


def test_report_per_kernel_and_screen() -> None:
    steps = {"build": {"status": "ok", "seconds": 100.0}, "tests": {"status": "ok", "seconds": 50.0}}
    summary = report.summarize(records(), bench_rows(), steps, {"device": "Fake", "arch": "86"})
    assert summary["kernels"]["sq_l2_distance"]["status"] == "PASS"
    assert summary["kernels"]["sq_l2_distance"]["passed"] == 2
    assert summary["kernels"]["pca_project"]["status"] == "FAIL" and not summary["passed"]
    assert summary["failed_kernels"] == ["pca_project"] and summary["ceilings"]["copy_gbs"] == 1500.0
    json.dumps(summary)  # JSON-ready
    screen = report.format_screen(summary)
    assert "ceilings: fp32 GEMM 19.5 TFLOP/s, fp16 GEMM 250.0 TFLOP/s, copy 1500 GB/s" in screen
    distance = next(line for line in screen.splitlines() if line.startswith("sq_l2_distance"))
    assert "PASS 2/2" in distance and "4.00x" in distance and "55% fp32_gemm" in distance
    assert "faiss-gpu 1.50x" in distance and "torch.cdist^2 err" in distance
    assert "FAILED pca/test_b.py::test_parity[cuda_emulated]: AssertionError: 0.1 > 1e-5" in screen
    assert "not run: time budget spent" in screen and "faiss-gpu anchors omitted" in screen
    assert screen.splitlines()[-1] == "gpu-check: FAIL (pca_project)"
    passing = {k: v for k, v in records().items() if "pca" not in k}
    assert report.summarize(passing, [], steps, {})["passed"]
    assert not report.summarize(passing, [], {**steps, "bench": {"status": "timeout"}}, {})["passed"]
    unattributed = {"x.py::test": {"outcome": "failed", "kernels": [], "message": "ImportError"}}
    assert report.summarize(unattributed, [], steps, {})["failed_kernels"] == [report.OTHER]


def test_check_orchestration_with_steps_faked(monkeypatch, tmp_path, capsys) -> None:
    calls = []

    def fake_step(command, cwd, timeout, log, **env):
        calls.append((command, env, timeout))
        joined = " ".join(command)
        if command[1:3] == ["-m", "pytest"]:
            Path(joined.split("--kernel-report=")[1].split()[0]).write_text(json.dumps(records()))
        if "gpucheck.bench" in joined:
            Path(joined.split("--jsonl=")[1].split()[0]).write_text("\n".join(json.dumps(r) for r in bench_rows()))
        return {"status": "ok", "seconds": 1.0}

    monkeypatch.setattr(run, "_step", fake_step)
    monkeypatch.setenv("CUDACXX", "/usr/local/cuda/bin/nvcc")
    device = Device(0, "NVIDIA Fake", (9, 0), 80.0)
    out = tmp_path / "out" / "gpu_check.json"
    code = run.check(source=ROOT, out=out, budget=600, find=lambda: (device, ""))
    assert code == 1  # the faked pca_project test failed
    (build, build_env, build_limit), (tests, tests_env, _), (bench, _, _) = calls
    assert build_env == {"VK_CUDA": "ON", "CUDAARCHS": "90"} and build_limit == 300
    assert tests[1:6] == ["-m", "pytest", "-m", "emulation", "-q"] and tests_env == {"VK_KERNEL_DEVICE": "cuda:0"}
    assert bench[1:3] == ["-m", "vision_kernels.gpucheck.bench"]
    written = json.loads(out.read_text())
    assert written["context"]["arch"] == "90" and written["kernels"]["pca_project"]["status"] == "FAIL"
    assert list(out.parent.glob("*.tmp*")) == []  # written atomically, no temporary left
    screen = capsys.readouterr().out
    assert "vision-kernels gpu-check: NVIDIA Fake (sm_90)" in screen and "gpu-check: FAIL (pca_project)" in screen
    monkeypatch.delenv("CUDACXX")
    monkeypatch.setattr(run.shutil, "which", lambda name: None)
    assert run.check(source=ROOT, out=out, find=lambda: (device, "")) == 1  # no nvcc: one line, failure
    assert "no nvcc on PATH" in capsys.readouterr().err


def test_ceiling_fraction_by_dtype() -> None:
    limits = {"fp32_gemm_tflops": 10.0, "fp16_gemm_tflops": 100.0, "copy_gbs": 1000.0}
    assert ceilings.fraction(1e10, None, 2.0, torch.float32, limits) == (0.5, "fp32_gemm")
    assert ceilings.fraction(1e11, None, 2.0, torch.bfloat16, limits) == (0.5, "fp16_gemm")
    assert ceilings.fraction(None, 1e9, 2.0, torch.float32, limits) == (0.5, "copy")
    assert ceilings.fraction(None, None, 2.0, torch.float32, limits) == (None, None)


def test_every_gpu_case_benchmarks_a_registered_cuda_kernel() -> None:
    import vision_kernels.ops  # noqa: F401
    from vision_kernels.ops import _registry

    kernels = {name.split("::")[1] for name in _registry.EMULATED_KERNELS}
    assert {case.kernel for case in cases.CASES} <= kernels
    assert {"sq_l2_distance", "attention_decomposition", "second_order_effects", "pca_project", "cc_conv2d",
            "patch_nn"} <= {case.kernel for case in cases.CASES}  # fmt: skip


def test_device_mode_of_the_parity_tests(monkeypatch) -> None:
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    monkeypatch.setenv("VK_KERNEL_DEVICE", "cpu")
    assert testing.kernel_device() == "cpu" and testing.kernel_device_unavailable("cpu") is None
    testing.KERNEL_CALLS.clear()
    got = testing.emulated("vision_kernels::sq_l2_distance")(x, y, True)
    torch.testing.assert_close(got, torch.cdist(x, y).square(), rtol=1e-5, atol=1e-5)
    assert testing.KERNEL_CALLS == ["vision_kernels::sq_l2_distance"]
    with pytest.raises(ValueError, match=r"argument 'x' must be on a cpu device for this kernel, got meta"):
        testing.emulated("vision_kernels::sq_l2_distance")(x.to("meta"), y.to("meta"), True)
    monkeypatch.setenv("VK_KERNEL_DEVICE", "gpu")
    with pytest.raises(ValueError, match="VK_KERNEL_DEVICE must be emulation, cuda, cuda:N or cpu, got 'gpu'"):
        testing.kernel_device()
    if not torch.cuda.is_available():
        assert "no usable CUDA device" in str(testing.kernel_device_unavailable("cuda"))


def test_gpu_cases_build_and_call_on_meta_tensors() -> None:
    # Every case's inputs, our op and its reference and anchors, traced on the meta device (shapes, signatures)
    # as they will run on a GPU: a renamed argument or a wrong shape fails here, not the day a GPU exists.
    data_dependent = {("patch_nn", "reference")}  # its chunk loop reads values
    for case in cases.CASES:
        contenders = case.setup("meta")
        assert contenders.device == "cuda" and (contenders.flops or contenders.bytes_moved)
        for name, fn in [("ours", contenders.ours), ("reference", contenders.reference), *contenders.anchors.items()]:
            if fn is not None and (case.kernel, name) not in data_dependent:
                fn()
