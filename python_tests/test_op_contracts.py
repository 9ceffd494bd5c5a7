"""The contract every op meets, run on every family's samples (``python_tests/<family>/samples.py``).

Checks (``vision_kernels.testing.CHECKS``): ``torch.library.opcheck``, results independent of torch's
thread count and identical under concurrent Python threads, the emulated CUDA kernel equal to the CPU
kernel, and bad device / dtype / shape of every tensor argument rejected with an error naming it.
A family adds its op by listing samples in its folder; an op without samples fails
``test_every_op_has_samples``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vision_kernels.testing import CHECKS, CONTRACTS, OpSample


def _load_samples() -> list[OpSample]:
    samples: list[OpSample] = []
    for path in sorted(Path(__file__).parent.glob("*/samples.py")):
        spec = importlib.util.spec_from_file_location(f"vk_samples_{path.parent.name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        samples.extend(module.SAMPLES)
    return samples


SAMPLES = _load_samples()
CASES = [
    pytest.param(check, sample, id=f"{check}-{sample.id}", marks=[pytest.mark.emulation] if check == "emulated" else [])
    for check in CONTRACTS
    for sample in SAMPLES
    if check in sample.contracts
]


@pytest.mark.parametrize(("check", "sample"), CASES)
def test_contract(check: str, sample: OpSample) -> None:
    CHECKS[check](sample)


def test_every_op_has_samples() -> None:
    """Every op with a CPU kernel has samples covering every contract."""
    import vision_kernels.ops  # noqa: F401  (registers every op)
    from vision_kernels.ops import _registry

    covered: dict[str, set[str]] = {}
    for sample in SAMPLES:
        covered.setdefault(sample.op, set()).update(sample.contracts)
    ops = sorted(_registry.EMULATED_KERNELS)
    assert ops, "no op registered"
    missing = {op: sorted(set(CONTRACTS) - covered.get(op, set())) for op in ops}
    assert not {op: gaps for op, gaps in missing.items() if gaps}, missing
