"""CLIP image-representation decomposition (Gandelsman, Efros, Steinhardt, ICLR 2024) on the fused kernel."""

from .capture import Capture, capture
from .decompose import CONVENTIONS, Decomposition, decompose
from .folded import clear_fold_cache, folded_head_matrices
from .towers import VisionTower, as_vision_tower

__all__ = [
    "CONVENTIONS",
    "Capture",
    "Decomposition",
    "VisionTower",
    "as_vision_tower",
    "capture",
    "clear_fold_cache",
    "decompose",
    "folded_head_matrices",
]
