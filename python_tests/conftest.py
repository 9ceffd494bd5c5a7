"""Shared pytest configuration: seeds, hypothesis profile, emulation availability."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import vision_kernels

settings.register_profile(
    "vision_kernels",
    deadline=None,
    max_examples=int(os.environ.get("VK_HYPOTHESIS_EXAMPLES", "25")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("vision_kernels")
vision_kernels.set_progress(False)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = vision_kernels.build_info()
    return [
        f"vision_kernels {info['version']}: cuda_compiled={info['cuda_compiled']} "
        f"archs={info['cuda_architectures']} emulation={info['emulation_available']} "
        f"gpu={info['gpu_available']} threads={info['num_threads']}"
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``emulation`` run CUDA kernels through vision_kernels._C_emu, or on the device named by
    VK_KERNEL_DEVICE (vision_kernels.testing; the tests of the harness itself are skipped then)."""
    from vision_kernels import testing

    device = testing.kernel_device()
    if device != "emulation":
        reason = testing.kernel_device_unavailable(device)
        for item in items:
            if "emulation" in item.keywords and (reason or item.path.name == "test_emulation_harness.py"):
                item.add_marker(pytest.mark.skip(reason=reason or "tests the host emulation harness, not a kernel"))
        return
    if vision_kernels.build_info()["emulation_available"]:
        return
    skip = pytest.mark.skip(reason="vision_kernels._C_emu was not built (no CUDA toolkit headers at build time)")
    for item in items:
        if "emulation" in item.keywords:
            item.add_marker(skip)
