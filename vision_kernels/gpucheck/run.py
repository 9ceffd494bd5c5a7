"""The gpu-check steps: find the device, build for it, parity tests on it, benchmarks, report.

Time bound (``budget``, default 600 s): the build may use at most half of it (a first build of the CUDA kernels
for one architecture; reruns are incremental in ``build/gpu-check-sm<arch>``), the parity tests at most 40% of
what is left, the benchmarks the rest (no case starts after that; the ceilings take ~10 s). Each step is a
subprocess killed at its limit, which marks the step ``timeout`` (a failure). Tests and benchmarks run from the
test folder so that they import the freshly installed package, not this process's copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .._files import write_text_atomic
from . import NO_DEVICE, report
from .device import Device, find_device


def find_source(start: Path) -> Path | None:
    """The vision-kernels checkout containing ``start`` (a folder with its pyproject.toml and python_tests/)."""
    for folder in (start, *start.parents):
        project = folder / "pyproject.toml"
        if (
            project.is_file()
            and 'name = "vision-kernels"' in project.read_text()
            and (folder / "python_tests").is_dir()
        ):
            return folder
    return None


def nvcc_major(nvcc: str) -> int | None:
    """CUDA major version of ``nvcc --version`` (None if it cannot be run)."""
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.", text)
    return int(match.group(1)) if match else None


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package, not a checkout
    env.update(extra)
    return env


def _step(command: Sequence[str], cwd: Path, timeout: float, log: TextIO, **env: str) -> dict[str, Any]:
    start = time.monotonic()
    print(f"gpu-check: $ {' '.join(command)}  (in {cwd}, at most {timeout:.0f} s)", file=log, flush=True)
    try:
        code = subprocess.run(list(command), cwd=cwd, env=_environment(**env), timeout=max(timeout, 1.0)).returncode
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        status = "timeout"
    return {"status": status, "seconds": time.monotonic() - start}


def build_command(python: str, source: Path, device: Device) -> tuple[list[str], dict[str, str]]:
    """``pip install`` of the checkout for ``device``: the test build (emulation module included) with VK_CUDA=ON
    and CUDAARCHS=<the device's arch>, in its own build folder (incremental reruns)."""
    command = [python, "-m", "pip", "install", f"{source}[test]", f"-Cbuild-dir=build/gpu-check-sm{device.arch}"]
    return command, {"VK_CUDA": "ON", "CUDAARCHS": device.arch}


def check(
    *,
    source: Path | None,
    out: Path,
    build: bool = True,
    tests: bool = True,
    bench: bool = True,
    budget: float = 600.0,
    log: TextIO | None = None,
    find: Callable[[], tuple[Device | None, str]] = find_device,
) -> int:
    """Run the check; returns the exit code (0 pass, 1 fail, :data:`NO_DEVICE` without a device). Progress goes
    to ``log`` (default: the current ``sys.stderr``)."""
    log = log if log is not None else sys.stderr
    device, reason = find()
    if device is None:
        print(f"vision-kernels gpu-check: no CUDA device, nothing checked: {reason}", file=sys.stderr)
        return NO_DEVICE
    deadline = time.monotonic() + budget
    python = sys.executable
    steps: dict[str, dict[str, Any]] = {}
    if (build or tests) and source is None:
        print("vision-kernels gpu-check: run it inside a vision-kernels checkout (or give --source): the build and "
              "the parity tests need the sources and python_tests/", file=sys.stderr)  # fmt: skip
        return 1
    context_nvcc: dict[str, Any] = {}
    work = out.parent / "gpu_check_work"
    work.mkdir(parents=True, exist_ok=True)
    if build:
        assert source is not None
        nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc")
        if nvcc is None:
            print("vision-kernels gpu-check: no nvcc on PATH (and CUDACXX unset): install the CUDA toolkit to build "
                  "the kernels for this device", file=sys.stderr)  # fmt: skip
            return 1
        context_nvcc = {"nvcc": nvcc, "nvcc_cuda_major": nvcc_major(nvcc)}
        command, env = build_command(python, source, device)
        steps["build"] = _step(command, source, budget / 2, log, **env)
    cwd = source / "python_tests" if source is not None else work
    records: dict[str, Any] | None = None
    if tests and steps.get("build", {}).get("status", "ok") == "ok":
        assert source is not None
        kernel_report = work / "tests.json"
        kernel_report.unlink(missing_ok=True)
        command = [python, "-m", "pytest", "-m", "emulation", "-q", "-p", "no:cacheprovider", "-p",
                   "vision_kernels.gpucheck.pytest_plugin", f"--kernel-report={kernel_report}"]  # fmt: skip
        limit = 0.4 * (deadline - time.monotonic())
        steps["tests"] = _step(command, cwd, limit, log, VK_KERNEL_DEVICE=f"cuda:{device.index}")
        if steps["tests"]["status"].startswith("failed"):
            steps["tests"]["status"] = "ok"  # failing tests are reported per kernel below
        if kernel_report.is_file():
            records = json.loads(kernel_report.read_text())
    rows: list[dict[str, Any]] = []
    if bench and steps.get("build", {}).get("status", "ok") == "ok":
        lines = work / "bench.jsonl"
        lines.unlink(missing_ok=True)
        remaining = deadline - time.monotonic()
        command = [python, "-m", "vision_kernels.gpucheck.bench", f"--jsonl={lines}", f"--budget={0.8 * remaining:.0f}"]
        steps["bench"] = _step(command, cwd, remaining, log, CUDA_VISIBLE_DEVICES=str(device.index))
        if lines.is_file():
            rows = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    context = {"device": device.name, "arch": device.arch, "memory_gib": round(device.memory_gib, 1),
               "budget_s": budget, "source": str(source) if source else None}  # fmt: skip
    context.update(context_nvcc)
    context.update(_installed_versions(cwd))
    summary = report.summarize(records, rows, steps, context)
    print(report.format_screen(summary))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(summary, indent=2, default=str) + "\n")
    print(f"gpu-check: JSON report in {out}")
    return 0 if summary["passed"] else 1


def _installed_versions(cwd: Path) -> dict[str, Any]:
    """torch and vision_kernels versions as the subprocesses see them (the fresh install)."""
    code = (
        "import json, torch, vision_kernels as v; "
        "print(json.dumps({'torch': torch.__version__, 'version': v.__version__}))"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=_environment(), capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {}
