"""CMake options of the native build: VK_CUDA=AUTO|ON|OFF and the default CUDA architectures.

These configure (never build) the project in a temporary directory, without the Python module.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cmake() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    cmake = shutil.which("cmake", path=search)
    if cmake is None:
        pytest.skip("cmake not found")
    version = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    major, minor = (int(v) for v in re.search(r"(\d+)\.(\d+)", version).groups())
    if (major, minor) < (3, 26):
        pytest.skip(f"cmake {major}.{minor} is older than the 3.26 the project needs")
    return cmake


def configure(build_dir: Path, *definitions: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [_cmake(), "-S", str(REPO), "-B", str(build_dir), "-DVK_BUILD_PYTHON_MODULE=OFF", *definitions]
    environment = {k: v for k, v in os.environ.items() if k != "CUDAARCHS"}
    environment.update(env or {})
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def test_cuda_on_without_compiler_fails_loudly(tmp_path: Path) -> None:
    result = configure(tmp_path, "-DVK_CUDA=ON", "-DCMAKE_CUDA_COMPILER=CMAKE_CUDA_COMPILER-NOTFOUND")
    assert result.returncode != 0
    assert "VK_CUDA=ON but no CUDA compiler was found" in result.stderr


def test_cuda_auto_without_compiler_builds_cpu_only(tmp_path: Path) -> None:
    result = configure(tmp_path, "-DVK_CUDA=AUTO", "-DCMAKE_CUDA_COMPILER=CMAKE_CUDA_COMPILER-NOTFOUND")
    assert result.returncode == 0, result.stderr
    assert "CUDA kernels OFF (no nvcc found; VK_CUDA=AUTO)" in result.stdout


def test_cuda_off(tmp_path: Path) -> None:
    result = configure(tmp_path, "-DVK_CUDA=OFF")
    assert result.returncode == 0, result.stderr
    assert "CUDA kernels ON" not in result.stdout


def test_invalid_cuda_option(tmp_path: Path) -> None:
    result = configure(tmp_path, "-DVK_CUDA=maybe")
    assert result.returncode != 0
    assert "VK_CUDA must be AUTO, ON or OFF, got 'maybe'" in result.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_default_and_overridden_architectures(tmp_path: Path) -> None:
    default = configure(tmp_path / "default", "-DVK_CUDA=ON")
    assert default.returncode == 0, default.stderr
    assert "architectures 80;86;89;90" in default.stdout
    overridden = configure(tmp_path / "env", "-DVK_CUDA=ON", env={"CUDAARCHS": "75;90"})
    assert overridden.returncode == 0, overridden.stderr
    assert "architectures 75;90" in overridden.stdout
    explicit = configure(tmp_path / "define", "-DVK_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=89")
    assert explicit.returncode == 0, explicit.stderr
    assert "architectures 89)" in explicit.stdout
