"""Interpreting CLIP's image representation via text-based decomposition (Gandelsman, Efros, Steinhardt, ICLR 2024).

* :func:`decompose`: the image embedding of an open_clip ViT or a transformers CLIP vision model as
  an exact sum of per-(layer, head[, token]) terms, MLP terms, the embedding term and a bias term,
  computed with the fused :func:`vision_kernels.ops.attention_decomposition` kernel. The forward
  pass's recorded quantities (:class:`Capture`) are kept for further analyses.
* :func:`text_span`: the greedy text basis of a head (covariance form), with text banks
  (:func:`load_text_bank`) embedded by :func:`encode_texts`.
* :func:`heatmaps` / :func:`text_heatmaps`, :func:`segment`, :func:`segmentation_scores`,
  :func:`overlay_figure`: spatial maps and zero-shot segmentation.
* :func:`mean_ablate`, :func:`zero_shot_classifier`, :func:`zero_shot_accuracy`: head, layer and MLP
  ablations and their effect on zero-shot accuracy.
"""

from .ablation import mean_ablate, mean_ablation_accuracy, zero_shot_accuracy
from .capture import Capture, capture
from .decompose import CONVENTIONS, Decomposition, decompose
from .figures import overlay_figure
from .folded import clear_fold_cache, folded_head_matrices
from .models import LoadedClip, load_clip
from .spatial import average_precision, heatmaps, segment, segmentation_scores, text_heatmaps, token_contributions
from .texts import (
    DEFAULT_TEMPLATES,
    available_text_banks,
    encode_texts,
    load_text_bank,
    zero_shot_classifier,
)
from .textspan import TextSpanResult, format_text_spans, head_text_spans, text_span
from .towers import FinalNorm, VisionTower, as_vision_tower

__all__ = [
    "CONVENTIONS",
    "DEFAULT_TEMPLATES",
    "Capture",
    "Decomposition",
    "FinalNorm",
    "LoadedClip",
    "TextSpanResult",
    "VisionTower",
    "as_vision_tower",
    "available_text_banks",
    "average_precision",
    "capture",
    "clear_fold_cache",
    "decompose",
    "encode_texts",
    "folded_head_matrices",
    "format_text_spans",
    "head_text_spans",
    "heatmaps",
    "load_clip",
    "load_text_bank",
    "mean_ablate",
    "mean_ablation_accuracy",
    "overlay_figure",
    "segment",
    "segmentation_scores",
    "text_heatmaps",
    "text_span",
    "token_contributions",
    "zero_shot_accuracy",
    "zero_shot_classifier",
]
