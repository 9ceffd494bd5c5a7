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

Second-order effects of neurons (Gandelsman, Efros, Steinhardt, 2024) and CLIP-InterpreT (Madasu et al., 2024):

* :func:`neuron_effects` / :func:`neuron_directions`: the effect of each MLP neuron on the embedding through
  the later attention heads (fused kernel :func:`vision_kernels.ops.second_order_effects`);
  :func:`collect_neuron_statistics` / :func:`neuron_statistics` (significance thresholds, principal
  directions), :func:`ablate_neuron_effects`.
* :func:`orthogonal_matching_pursuit` (batched, torch) and :func:`sparse_text_decomposition`.
* :func:`neuron_segmentation`, :func:`neuron_heatmaps`, :func:`select_neurons`.
* :class:`HeadIndex` (FAISS databases of per-head contributions) and the five analyses:
  :func:`property_neighbors`, :func:`head_topic_segmentation`, :func:`contrastive_segmentation`,
  :func:`image_neighbors`, :func:`text_neighbors`.
"""

from .ablation import mean_ablate, mean_ablation_accuracy, zero_shot_accuracy
from .capture import Capture, capture
from .decompose import CONVENTIONS, Decomposition, decompose
from .figures import overlay_figure
from .folded import clear_fold_cache, folded_head_matrices
from .index import HeadIndex, ModelIdentity, SearchResult, head_key, model_identity
from .interpret import (
    ContrastiveSegmentation,
    TopicSegmentation,
    contrastive_segmentation,
    head_topic_segmentation,
    image_neighbors,
    property_heads,
    property_neighbors,
    text_neighbors,
)
from .models import LoadedClip, load_clip
from .neuron_segmentation import NeuronSegmentation, neuron_heatmaps, neuron_segmentation, select_neurons
from .neurons import (
    NeuronDirections,
    NeuronStatistics,
    ablate_neuron_effects,
    collect_neuron_statistics,
    neuron_directions,
    neuron_effects,
    neuron_statistics,
)
from .sparse import (
    DictionaryGram,
    SparseCode,
    TextDecomposition,
    clear_gram_cache,
    orthogonal_matching_pursuit,
    sparse_text_decomposition,
)
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
    "Capture",
    "ContrastiveSegmentation",
    "DEFAULT_TEMPLATES",
    "Decomposition",
    "FinalNorm",
    "HeadIndex",
    "LoadedClip",
    "ModelIdentity",
    "NeuronDirections",
    "NeuronSegmentation",
    "NeuronStatistics",
    "SearchResult",
    "SparseCode",
    "DictionaryGram",
    "clear_gram_cache",
    "TextDecomposition",
    "TextSpanResult",
    "TopicSegmentation",
    "VisionTower",
    "ablate_neuron_effects",
    "as_vision_tower",
    "available_text_banks",
    "average_precision",
    "capture",
    "clear_fold_cache",
    "collect_neuron_statistics",
    "contrastive_segmentation",
    "decompose",
    "encode_texts",
    "folded_head_matrices",
    "format_text_spans",
    "head_key",
    "head_text_spans",
    "head_topic_segmentation",
    "heatmaps",
    "image_neighbors",
    "load_clip",
    "load_text_bank",
    "mean_ablate",
    "mean_ablation_accuracy",
    "model_identity",
    "neuron_directions",
    "neuron_effects",
    "neuron_heatmaps",
    "neuron_segmentation",
    "neuron_statistics",
    "orthogonal_matching_pursuit",
    "overlay_figure",
    "property_heads",
    "property_neighbors",
    "segment",
    "segmentation_scores",
    "select_neurons",
    "sparse_text_decomposition",
    "text_heatmaps",
    "text_neighbors",
    "text_span",
    "token_contributions",
    "zero_shot_accuracy",
    "zero_shot_classifier",
]
