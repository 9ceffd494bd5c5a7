"""The CUDA device the check runs on, found through torch (no vision_kernels build needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Device:
    """A CUDA device: ``arch`` is what ``CUDAARCHS`` takes (``"86"`` for compute capability 8.6)."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_gib: float

    @property
    def arch(self) -> str:
        return cuda_arch(self.capability)


def cuda_arch(capability: tuple[int, int]) -> str:
    """``CUDAARCHS`` value of a compute capability: (8, 6) -> "86", (9, 0) -> "90", (12, 0) -> "120"."""
    major, minor = capability
    if major < 1 or not 0 <= minor <= 9:
        raise ValueError(f"vision_kernels.gpucheck: unexpected compute capability {major}.{minor}")
    return f"{major}{minor}"


def find_device(torch_module: Any = None) -> tuple[Device | None, str]:
    """The first CUDA device torch sees, or ``(None, reason)`` in one line.

    ``torch_module`` stands for ``torch`` (tests pass a fake).
    """
    if torch_module is None:
        import torch as torch_module
    if getattr(torch_module.version, "cuda", None) is None:
        return None, (
            f"torch {torch_module.__version__} is a CPU-only build: install a CUDA build of torch "
            "(pip install torch from https://download.pytorch.org/whl/cu12x) on a machine with an NVIDIA GPU"
        )
    if not torch_module.cuda.is_available() or torch_module.cuda.device_count() == 0:
        return None, "no CUDA device is visible to torch (no NVIDIA GPU or driver, or CUDA_VISIBLE_DEVICES is empty)"
    index = 0
    properties = torch_module.cuda.get_device_properties(index)
    capability = tuple(torch_module.cuda.get_device_capability(index))
    return Device(index, str(properties.name), (int(capability[0]), int(capability[1])),
                  properties.total_memory / 2**30), ""  # fmt: skip
