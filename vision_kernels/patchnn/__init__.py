"""GPNN (Granot et al., "Drop the GAN: In Defense of Patches Nearest Neighbors as Single Image
Generative Models", CVPR 2022) on the patch_nn kernels, written for ``[T, H, W, C]`` so that VGPNN
(single-video generation) reuses it.

    from vision_kernels.patchnn import generate, read_image, write_image
    image = read_image("balloons.png")              # float32 [H, W, 3] in [0, 1]
    write_image("sample.png", generate(image, seed=1))

Applications: :func:`generate`, :func:`retarget`, :func:`analogy`, :func:`inpaint`, :func:`collage`,
:func:`edit`; the command line ``vision-kernels gpnn generate|retarget|analogy|inpaint|collage|edit``.
The machinery: :class:`GPNNConfig`, :func:`synthesize`, :func:`pnn_step`, the pyramid in
:mod:`vision_kernels.patchnn.pyramid`, search backends in :mod:`vision_kernels.patchnn.search`.
"""

from .apps import analogy, collage, edit, generate, inpaint, retarget
from .gpnn import GPNNConfig, as_video, pnn_step, pyramid_plan, synthesize
from .image_io import read_image, read_mask, write_image, write_mask
from .metrics import mean_patch_distance
from .pyramid import build_pyramid, pyramid_shapes, resize
from .search import faiss_patch_nn, search_patches

__all__ = [
    "GPNNConfig",
    "analogy",
    "as_video",
    "build_pyramid",
    "collage",
    "edit",
    "faiss_patch_nn",
    "generate",
    "inpaint",
    "mean_patch_distance",
    "pnn_step",
    "pyramid_plan",
    "pyramid_shapes",
    "read_image",
    "read_mask",
    "resize",
    "retarget",
    "search_patches",
    "synthesize",
    "write_image",
    "write_mask",
]
