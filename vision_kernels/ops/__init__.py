"""Accelerated ops: torch.library custom ops in the ``vision_kernels`` namespace.

Every op has a CPU kernel and a CUDA kernel (both in the compiled core), a fake kernel for
shape propagation (``torch.compile``, meta tensors), autograd where a gradient makes sense,
checks that name the bad argument, and a plain-PyTorch twin in ``vision_kernels.reference``.
Public functions accept torch tensors, and numpy (CPU) or cupy (GPU) arrays through DLPack.
"""

from .attention_decomp import attention_decomposition
from .distance import sq_l2_distance
from .second_order import second_order_effects

__all__ = ["attention_decomposition", "second_order_effects", "sq_l2_distance"]
