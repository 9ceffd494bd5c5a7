"""Plain-PyTorch implementations of every op: the ground truth the kernels are tested against.

They favour obvious correctness over speed and memory (the benchmarks show both), follow the
same conventions (shapes, dtypes, accumulation precision) as the ops, and take no shortcuts
that the kernels take.
"""

from . import attention_decomp, cc_conv, distance, patch_nn, pca_project, second_order

__all__ = ["attention_decomp", "cc_conv", "distance", "patch_nn", "pca_project", "second_order"]
