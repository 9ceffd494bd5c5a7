"""The host emulation harness itself: shared memory, barriers, warp shuffles and votes, atomics,
and the timeout that turns a divergent barrier into a failure instead of a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vision_kernels import _native

pytestmark = pytest.mark.emulation


@pytest.mark.parametrize("block", [32, 64, 256])
@pytest.mark.parametrize("n", [1, 31, 300])
def test_block_sum(block: int, n: int) -> None:
    values = torch.randn(n)
    sums = torch.empty((n + block - 1) // block)
    _native.emulation_module().harness_block_sum_cuda(_native.tensor_ref(values), _native.tensor_ref(sums), block, 0)
    padded = torch.nn.functional.pad(values, (0, sums.numel() * block - n))
    torch.testing.assert_close(sums, padded.view(-1, block).sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [5, 32, 100, 257])
def test_warp_shuffles_votes_and_atomics(n: int) -> None:
    values = torch.randint(-5, 6, (n,)).float()
    prefix = torch.empty(n)
    warps = (n + 31) // 32
    stats = torch.empty(warps, 4)
    total = torch.zeros(1)
    positives = torch.zeros(1, dtype=torch.int32)
    ref = _native.tensor_ref
    _native.emulation_module().harness_warp_ops_cuda(
        ref(values), ref(prefix), ref(stats), ref(total), ref(positives), 64, 0
    )
    padded = torch.nn.functional.pad(values, (0, warps * 32 - n)).view(warps, 32)
    valid = torch.nn.functional.pad(torch.ones(n, dtype=torch.bool), (0, warps * 32 - n)).view(warps, 32)
    torch.testing.assert_close(prefix, padded.cumsum(1).flatten()[:n])
    torch.testing.assert_close(stats[:, 0], padded.sum(1))
    torch.testing.assert_close(stats[:, 1], padded.masked_fill(~valid, -3.0e38).amax(1))
    torch.testing.assert_close(stats[:, 2], padded[:, 0])
    torch.testing.assert_close(stats[:, 3], (padded > 0).sum(1).float())
    torch.testing.assert_close(total, values.sum(0, keepdim=True))
    assert int(positives) == int((values > 0).sum())


def test_bad_launch_arguments_raise() -> None:
    values = torch.randn(10)
    sums = torch.empty(1)
    with pytest.raises(ValueError, match="argument 'block' must be a power of two"):
        _native.emulation_module().harness_block_sum_cuda(_native.tensor_ref(values), _native.tensor_ref(sums), 48, 0)


def test_divergent_barrier_aborts_instead_of_hanging() -> None:
    code = textwrap.dedent(
        """
        from vision_kernels import _native
        _native.emulation_module().harness_divergent_barrier_cuda(0)
        print("finished")
        """
    )
    environment = dict(os.environ, VK_EMU_TIMEOUT="2")
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "finished" not in result.stdout
    assert "did not finish within 2 s" in result.stderr
    assert "divergent_barrier_kernel" in result.stderr
