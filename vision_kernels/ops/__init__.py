"""Accelerated ops: torch.library custom ops in the ``vision_kernels`` namespace.

Every op has a CPU kernel and a CUDA kernel (both in the compiled core), a fake kernel for
shape propagation (``torch.compile``, meta tensors), autograd where a gradient makes sense,
checks that name the bad argument, and a plain-PyTorch twin in ``vision_kernels.reference``.
Public functions accept torch tensors, numpy (CPU) and cupy (GPU) arrays (results of the same
kind), and any other DLPack producer such as JAX arrays (through ``torch.from_dlpack``; results are
torch tensors). Every tensor argument, masks and optional tensors included, must be on the device of
the others: a mix is a ValueError naming both arguments (see ``ops/_registry.py``).
"""

from .attention_decomp import attention_decomposition
from .cc_conv import cc_conv2d
from .cc_conv_grid import cc_conv2d_grid
from .distance import sq_l2_distance
from .patch_nn import PatchNNResult, patch_match, patch_nn, patch_vote, valid_patch_mask
from .pca_project import pca_project, pca_reconstruct
from .second_order import second_order_effects

__all__ = [
    "attention_decomposition",
    "cc_conv2d",
    "cc_conv2d_grid",
    "sq_l2_distance",
    "patch_nn",
    "patch_match",
    "patch_vote",
    "PatchNNResult",
    "valid_patch_mask",
    "pca_project",
    "pca_reconstruct",
    "second_order_effects",
]
