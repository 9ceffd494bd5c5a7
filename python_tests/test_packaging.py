"""Packaging: extras against the imports, the license, the release wheel, the GPU diagnosis of build_info().

The release wheel (``make wheel``) is checked when ``VK_RELEASE_WHEEL`` names it, which
``make oldest-torch`` does (CI); elsewhere those tests are skipped with that reason.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vision_kernels
from vision_kernels import _optional
from vision_kernels._build_info import CudaBuild, GpuProbe, diagnose_gpu

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11) or tomli")

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
# Extras that bring tools or GPU builds of packages, not the import names of _optional.EXTRAS.
NON_FEATURE_EXTRAS = {"all", "test", "smoke", "gpu", "gpu-cu12", "gpu-cu13"}
# Imported by vision_kernels without being declared: cupy arrives only as a user's own cupy array
# (ops/_interop.py), so it is installed whenever it is imported.
UNDECLARED_IMPORTS = {"cupy"}
# Imported only by tools that run the test suite (vision_kernels.gpucheck): declared in the test extra.
TEST_EXTRA_IMPORTS = {"pytest"}
# Declared before the code that imports it lands (the data extra's loaders, another branch).
NOT_YET_IMPORTED: set[str] = set()
BASE_IMPORT_NAMES = {"torch": "torch", "numpy": "numpy", "tqdm": "tqdm", "PIL": "pillow", "safetensors": "safetensors"}


def _name(requirement: str) -> str:
    """Normalized distribution name of a requirement string: 'Open_Clip-Torch>=2' -> 'open-clip-torch'."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _expand(extra: str) -> set[str]:
    """Distributions an extra installs, following vision-kernels[a,b] self-references."""
    names: set[str] = set()
    for requirement in EXTRAS[extra]:
        self_reference = re.fullmatch(r"vision-kernels\[([a-z0-9,-]+)\]", requirement.replace(" ", ""))
        if self_reference:
            for inner in self_reference.group(1).split(","):
                names |= _expand(inner)
        else:
            names.add(_name(requirement))
    return names


# ---------------------------------------------------------------- extras and dependencies


def test_every_optional_import_name_maps_to_an_extra_that_installs_it() -> None:
    for module, (distribution, extra) in _optional.EXTRAS.items():
        assert extra in EXTRAS, f"_optional.EXTRAS[{module!r}] names extra {extra!r}, not in pyproject.toml"
        assert _name(distribution) in _expand(extra), f"[{extra}] does not install {distribution} (for {module})"


def test_every_feature_extra_distribution_is_mapped_in_optional() -> None:
    declared = set().union(*(_expand(extra) for extra in EXTRAS if extra not in NON_FEATURE_EXTRAS))
    mapped = {_name(distribution) for distribution, _ in _optional.EXTRAS.values()}
    assert declared == mapped, f"declared but unmapped: {declared - mapped}; mapped but undeclared: {mapped - declared}"


def test_figures_and_demo_are_extras_included_in_all_and_test() -> None:
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert not base & {"matplotlib", "scikit-image"}, "matplotlib / scikit-image must not be hard dependencies"
    assert _expand("figures") == {"matplotlib"}
    assert _expand("demo") == {"scikit-image", "matplotlib"}
    assert _expand("data") == {"webdataset"}
    everything = set().union(*(_expand(e) for e in EXTRAS if e not in NON_FEATURE_EXTRAS))
    assert everything <= _expand("all") <= _expand("test")


def test_gpu_extras_match_their_cuda_major_version() -> None:
    assert _expand("gpu") == _expand("gpu-cu13")
    for major in (12, 13):
        cupy = {name for name in _expand(f"gpu-cu{major}") if name.startswith("cupy")}
        assert cupy == {f"cupy-cuda{major}x"}, f"[gpu-cu{major}] installs {cupy}"


def _third_party_imports() -> dict[str, str]:
    """Top-level third-party module imported anywhere in vision_kernels/ -> one file importing it."""
    found: dict[str, str] = {}
    package = REPO / "vision_kernels"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]  # _optional.require("av", ...): an import by name
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "vision_kernels":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_import_is_a_dependency_or_an_extra() -> None:
    imports = _third_party_imports()
    unknown = {m: f for m, f in imports.items() if m not in BASE_IMPORT_NAMES and m not in _optional.EXTRAS}
    assert set(unknown) <= UNDECLARED_IMPORTS | TEST_EXTRA_IMPORTS, f"imports with no dependency or extra: {unknown}"
    assert TEST_EXTRA_IMPORTS <= _expand("test"), "the test extra must declare what gpu-check imports"
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert set(BASE_IMPORT_NAMES.values()) <= base
    # ...and nothing is declared that is never imported (imageio / imageio-ffmpeg were).
    declared = base | set().union(*(_expand(e) for e in EXTRAS if e not in NON_FEATURE_EXTRAS))
    known = [m for m in imports if m not in UNDECLARED_IMPORTS | TEST_EXTRA_IMPORTS]
    imported = {BASE_IMPORT_NAMES.get(m) or _name(_optional.EXTRAS[m][0]) for m in known}
    assert declared - imported <= NOT_YET_IMPORTED, f"declared but never imported: {declared - imported}"


def test_import_scan_sees_a_new_import(tmp_path: Path) -> None:
    # The scan above must be able to fail: a module importing an undeclared package is found.
    source = "import os\nimport imageio.v3 as iio\nfrom . import x\nfrom yaml import safe_load\n"
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    assert names - set(sys.stdlib_module_names) == {"imageio", "yaml"}


# ---------------------------------------------------------------- license


def test_license_file_matches_declared_license() -> None:
    assert PROJECT["license"] == "BSD-3-Clause"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, the vision-kernels developers" in text
    assert "Neither the name of the copyright holder" in text  # the third clause


def test_installed_metadata_declares_the_license() -> None:
    metadata = importlib.metadata.metadata("vision-kernels")
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert "LICENSE" in (metadata.get_all("License-File") or [])
    requires = metadata.get_all("Requires-Dist") or []
    matplotlib = [r for r in requires if _name(r) == "matplotlib"]
    assert matplotlib and all("extra ==" in r for r in matplotlib), matplotlib


# ---------------------------------------------------------------- the release wheel


def _release_wheel() -> Path:
    wheel = os.environ.get("VK_RELEASE_WHEEL")
    if not wheel:
        pytest.skip("no release wheel: VK_RELEASE_WHEEL is set by `make oldest-torch` (after `make wheel`)")
    return Path(wheel)


def test_release_wheel_contents() -> None:
    wheel = _release_wheel()
    assert re.search(r"-manylinux_\d+_\d+_x86_64\.whl$", wheel.name), f"not a manylinux wheel: {wheel.name}"
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"vision_kernels/_C\.[^/]*\.so", n) for n in names), "no compiled core _C"
    test_only = [n for n in names if "_C_emu" in n or n.endswith("cuda_resource_usage.txt") or "python_tests" in n]
    assert not test_only, f"test-only files in the release wheel: {test_only}"
    vendored = [n for n in names if re.search(r"\.libs/lib(gomp|cuda)", n)]
    assert not vendored, f"vendored runtime libraries: {vendored}"
    assert any(re.fullmatch(r"[^/]+\.dist-info/licenses/LICENSE", n) for n in names), "no LICENSE in the wheel"


def test_installed_package_is_the_release_build() -> None:
    _release_wheel()
    info = vision_kernels.build_info()
    assert info["emulation_available"] is False
    oldest = os.environ.get("VK_OLDEST_TORCH")
    if oldest:
        import torch

        assert torch.__version__.startswith(oldest + "."), f"expected torch {oldest}.*, got {torch.__version__}"


def _cmake() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    cmake = shutil.which("cmake", path=search)
    if cmake is None:
        pytest.skip("cmake not found")
    version = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)\.(\d+)", version)
    if match is None or (int(match.group(1)), int(match.group(2))) < (3, 26):
        pytest.skip("cmake older than the 3.26 the project needs")
    return cmake


def _configure(build_dir: Path, *definitions: str) -> subprocess.CompletedProcess:
    command = [_cmake(), "-S", str(REPO), "-B", str(build_dir), "-DVK_BUILD_PYTHON_MODULE=OFF", *definitions]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_release_option_leaves_out_the_emulation_module(tmp_path: Path) -> None:
    result = _configure(tmp_path, "-DVK_CUDA=OFF", "-DVK_RELEASE=ON")
    assert result.returncode == 0, result.stderr
    assert "VK_RELEASE=ON, so no host emulation module _C_emu" in result.stdout
    cache = (tmp_path / "CMakeCache.txt").read_text()
    assert "VK_RELEASE:BOOL=ON" in cache


def test_cuda_major_option_is_checked(tmp_path: Path) -> None:
    result = _configure(tmp_path / "bad", "-DVK_CUDA=OFF", "-DVK_CUDA_MAJOR=thirteen")
    assert result.returncode != 0
    assert "VK_CUDA_MAJOR must be a CUDA major version" in result.stderr
    if shutil.which("nvcc") is None:
        return
    wrong = _configure(tmp_path / "wrong", "-DVK_CUDA=ON", "-DVK_CUDA_MAJOR=99")
    assert wrong.returncode != 0
    assert "VK_CUDA_MAJOR=99 but" in wrong.stderr


# ---------------------------------------------------------------- GPU diagnosis (fakes, no GPU needed)

DEFAULT = CudaBuild.from_targets(True, 13000, "sm_80,compute_80,sm_86,compute_86,sm_89,compute_89,sm_90,compute_90")
DRIVER_13 = 13000


def _probe(capabilities: tuple[tuple[int, int], ...] = ((8, 6),), driver: int | None = DRIVER_13) -> GpuProbe:
    return GpuProbe(driver, len(capabilities), "", True, capabilities)


def test_targets_text_is_read_in_both_formats() -> None:
    assert DEFAULT.sass == ("80", "86", "89", "90") and DEFAULT.ptx == DEFAULT.sass
    new = CudaBuild.from_targets(True, 13000, "sm_80,sm_90,compute_90,sm_90a")
    assert new.sass == ("80", "90", "90a") and new.ptx == ("90",)
    legacy = CudaBuild.from_targets(True, 12040, "80,86")  # before the sm_/compute_ text: CMake embedded both
    assert legacy.sass == ("80", "86") and legacy.ptx == ("80", "86")


def test_not_compiled() -> None:
    diagnosis = diagnose_gpu(CudaBuild(False), GpuProbe(None, 0))
    assert not diagnosis.available and "CUDA kernels were not compiled" in diagnosis.reason


def test_no_driver() -> None:
    diagnosis = diagnose_gpu(DEFAULT, GpuProbe(None, 0, "no CUDA-capable device is detected"))
    assert not diagnosis.available and diagnosis.reason.startswith("no NVIDIA driver")


def test_driver_too_old_for_the_toolkit() -> None:
    diagnosis = diagnose_gpu(DEFAULT, _probe(driver=12040))
    assert not diagnosis.available
    assert diagnosis.reason.startswith("NVIDIA driver too old: it supports CUDA up to 12.4")
    assert "built with CUDA 13.0" in diagnosis.reason and "580.65.06" in diagnosis.reason
    assert "[gpu-cu12]" in diagnosis.reason
    # minor-version compatibility: a 13.0 driver runs a 13.2 runtime
    assert diagnose_gpu(CudaBuild.from_targets(True, 13020, "sm_86"), _probe(driver=13000)).available


def test_no_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    diagnosis = diagnose_gpu(DEFAULT, GpuProbe(DRIVER_13, 0, "no CUDA-capable device is detected"))
    assert not diagnosis.available
    assert diagnosis.reason == "no CUDA device visible: no CUDA-capable device is detected (CUDA_VISIBLE_DEVICES='')"


def test_cpu_only_torch() -> None:
    diagnosis = diagnose_gpu(DEFAULT, GpuProbe(DRIVER_13, 1, "", False, ()))
    assert not diagnosis.available and diagnosis.reason.startswith("torch cannot use CUDA")


@pytest.mark.parametrize(
    ("capability", "code"),
    [
        ((8, 0), "SASS sm_80"),
        ((8, 6), "SASS sm_86"),
        ((8, 7), "SASS sm_86"),  # same major, lower minor runs
        ((9, 0), "SASS sm_90"),
        ((10, 0), "PTX compute_90"),  # newer GPU: the embedded PTX of the newest architecture
        ((12, 0), "PTX compute_90"),
    ],
)
def test_device_runs_sass_or_ptx(capability: tuple[int, int], code: str) -> None:
    diagnosis = diagnose_gpu(DEFAULT, _probe((capability,)))
    assert diagnosis.available, diagnosis.reason
    assert diagnosis.devices[0].startswith(f"cuda:0 sm_{10 * capability[0] + capability[1]}: {code}")


def test_architecture_not_compiled() -> None:
    sass_only = CudaBuild.from_targets(True, 13000, "sm_80,sm_90")
    diagnosis = diagnose_gpu(sass_only, _probe(((12, 0),)))
    assert not diagnosis.available
    assert diagnosis.reason.startswith("architecture not compiled: cuda:0 sm_120: no compiled code")
    assert diagnosis.reason.endswith("rebuild with CUDAARCHS=120")
    older = diagnose_gpu(DEFAULT, _probe(((7, 5),)))  # PTX runs only on its own architecture or newer
    assert not older.available and "sm_75" in older.reason
    arch_specific = CudaBuild.from_targets(True, 13000, "sm_90a")
    assert diagnose_gpu(arch_specific, _probe(((9, 0),))).available
    assert not diagnose_gpu(arch_specific, _probe(((10, 0),))).available


def test_ptx_needs_a_driver_as_new_as_the_toolkit() -> None:
    build = CudaBuild.from_targets(True, 13020, "sm_90,compute_90")
    assert diagnose_gpu(build, _probe(((12, 0),), driver=13020)).available
    old_minor = diagnose_gpu(build, _probe(((12, 0),), driver=13000))
    assert not old_minor.available and "PTX needs a driver of CUDA >= 13.2" in old_minor.reason
    assert diagnose_gpu(build, _probe(((9, 0),), driver=13000)).available  # SASS needs no JIT


def test_any_usable_device_makes_the_gpu_available() -> None:
    diagnosis = diagnose_gpu(CudaBuild.from_targets(True, 13000, "sm_80"), _probe(((7, 0), (8, 0))))
    assert diagnosis.available
    assert diagnosis.devices == ("cuda:0 sm_70: no compiled code", "cuda:1 sm_80: SASS sm_80")


def test_build_info_reports_the_cuda_build() -> None:
    info = vision_kernels.build_info()
    if not info["cuda_compiled"]:
        assert info["cuda_version"] is None and info["gpu_extra"] is None
        assert info["gpu_reason"].startswith("CUDA kernels were not compiled")
        return
    major = info["cuda_runtime_version"] // 1000
    assert info["cuda_version"].startswith(f"{major}.") and info["gpu_extra"] == f"gpu-cu{major}"
    assert info["gpu_extra"] in EXTRAS
    nvcc_major = re.match(r"NVIDIA (\d+)\.", info["cuda_compiler"])
    assert nvcc_major and int(nvcc_major.group(1)) == major, info["cuda_compiler"]
